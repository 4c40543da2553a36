package wire

import (
	"time"

	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/subjects"
)

// RunState is the state of a run.
type RunState string

// Run states. Succeeded, Failed and Cancelled are terminal.
const (
	RunQueued    RunState = "queued"
	RunRunning   RunState = "running"
	RunSucceeded RunState = "succeeded"
	RunFailed    RunState = "failed"
	RunCancelled RunState = "cancelled"
)

// Terminal reports whether s is a final state.
func (s RunState) Terminal() bool {
	return s == RunSucceeded || s == RunFailed || s == RunCancelled
}

// StageState is the state of a stage within a run.
type StageState string

// Stage states. Succeeded, Failed, Skipped and Cancelled are terminal.
const (
	StagePending   StageState = "pending"
	StageQueued    StageState = "queued"
	StageRunning   StageState = "running"
	StageSucceeded StageState = "succeeded"
	StageFailed    StageState = "failed"
	StageSkipped   StageState = "skipped"
	StageCancelled StageState = "cancelled"
)

// Terminal reports whether s is a final state.
func (s StageState) Terminal() bool {
	switch s {
	case StageSucceeded, StageFailed, StageSkipped, StageCancelled:
		return true
	}
	return false
}

// Run is a run: its own document, stored in the runs bucket under its ID,
// and, filled in when it is read, its pipeline (stored once per content
// hash in the pipelines object store, named by Spec) and its stages (one
// document each in the stages bucket, see StageRun). Every document is
// only ever changed by compare-and-set on its key's revision, so an event
// rewrites the few hundred bytes it changes, whatever the pipeline's size.
type Run struct {
	// ID is the run's ULID.
	ID string `json:"id"`
	// TriggerID is the delivery that started the run.
	TriggerID string `json:"trigger_id"`
	// Repo, Branch and Commit are what the run builds.
	Repo   string `json:"repo,omitempty"`
	Branch string `json:"branch,omitempty"`
	Commit string `json:"commit,omitempty"`
	// CloneURL is where the stages fetch Commit from; empty runs them on
	// an empty workspace.
	CloneURL string `json:"clone_url,omitempty"`
	// Untrusted is the trigger's: its stages get no secrets.
	Untrusted bool `json:"untrusted,omitempty"`
	// File is the pipeline file's name.
	File string `json:"file"`
	// PipelineName is the pipeline's name.
	PipelineName string `json:"pipeline"`
	// Spec is the content hash of the pipeline spec (the validated
	// pipeline, as the run's stages are queued from it), the name of its
	// object in the pipelines bucket.
	Spec string `json:"spec"`
	// StageCount is how many stages the pipeline has.
	StageCount int `json:"stage_count"`
	// Pipeline is the validated pipeline, read from the pipelines bucket;
	// the run document stored in the runs bucket has none.
	Pipeline *pipeline.Pipeline `json:"pipeline_spec,omitempty"`
	// Tier is the tier the run's stages are queued at.
	Tier subjects.Tier `json:"tier"`
	// State is the run's state.
	State RunState `json:"state"`
	// Seq is the trigger's stream sequence: runs of a repository are
	// admitted in this order.
	Seq uint64 `json:"seq"`
	// Group is the run's concurrency group, interpolated; empty for none.
	Group string `json:"group,omitempty"`
	// Pending says why a queued run is not admitted yet; nil once it is.
	Pending *Pending `json:"pending,omitempty"`
	// Lease is the WIP bucket key of the slot the run holds once admitted.
	Lease string `json:"lease,omitempty"`
	// Admitted is when the run got its WIP slot (and group lock).
	Admitted time.Time `json:"admitted,omitzero"`
	// Stages holds one entry per pipeline stage, in file order, read from
	// the stages bucket; a stage with no document there is pending. The
	// run document stored in the runs bucket has none (see
	// Run.Document); the JSON of a whole run, as weft prints it, has them.
	Stages []StageRun `json:"stages,omitempty"`
	// CancelReason says who cancelled the run.
	CancelReason string `json:"cancel_reason,omitempty"`
	// Replays counts the operator's replays of failed stages and retries
	// of the run; each one rewrites every stage that did not succeed with
	// it as Epoch.
	Replays int `json:"replays,omitempty"`
	// Created, Started and Finished time the run.
	Created  time.Time `json:"created"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`

	// journal holds, while an edit is open (BeginEdit), each stage
	// handed out for changing, as it was before.
	journal map[int]StageRun
}

// BeginEdit starts recording the stages handed out by Stage and Edit, so
// that whoever changes the run in place can tell (EndEdit) which stages
// changed and undo them, without copying every stage.
func (r *Run) BeginEdit() { r.journal = map[int]StageRun{} }

// EndEdit stops recording and returns the position and former state of
// every stage handed out since BeginEdit (changed or not).
func (r *Run) EndEdit() map[int]StageRun {
	j := r.journal
	r.journal = nil
	return j
}

// Edit returns the stage at position i for changing, recording its state
// while an edit is open.
func (r *Run) Edit(i int) *StageRun {
	if r.journal != nil {
		if _, ok := r.journal[i]; !ok {
			r.journal[i] = r.Stages[i]
		}
	}
	return &r.Stages[i]
}

// StageRun is the state of one stage of a run, stored in the stages
// bucket under subjects.StageKey(run, stage).
type StageRun struct {
	// Key is the stage key.
	Key string `json:"key"`
	// State is the stage's state.
	State StageState `json:"state"`
	// Attempt is the current (or last) attempt; 0 before the first.
	Attempt int `json:"attempt"`
	// Job is the attempt number of the stage's job message. A job that is
	// redelivered (its agent died) runs as the next Attempt under the
	// same Job.
	Job int `json:"job,omitempty"`
	// Queue is the agent queue the stage runs on.
	Queue string `json:"queue"`
	// Agent is the agent running or that ran the current attempt.
	Agent string `json:"agent,omitempty"`
	// ExitCode and Category say how the stage finished.
	ExitCode int      `json:"exit_code"`
	Category Category `json:"category,omitempty"`
	// Message explains a failure or a skip.
	Message string `json:"message,omitempty"`
	// Epoch is the run's Replays when the stage was last rewritten by a
	// replay: a replay changes every stage document that did not
	// succeed, so that no writer holding an older copy of one can write
	// it over the replay.
	Epoch int `json:"epoch,omitempty"`
	// Cancelling is set on a running stage of a run being cancelled, and
	// on a stage cancelled on its own (weft cancel RUN STAGE) whatever its
	// state: the attempt is to stop, a redelivery of its job is not run,
	// and it is not retried. It stays set on the stage it ended.
	Cancelling bool `json:"cancelling,omitempty"`
	// LogSeq is the stream sequence of the stage's last log batch.
	LogSeq uint64 `json:"log_seq,omitempty"`
	// JobSeq is the jobs stream sequence of the stage's job message, so
	// the reconcile loop can tell a job that is gone.
	JobSeq uint64 `json:"job_seq,omitempty"`
	// ArtifactsSeq is the events stream sequence of the finished event
	// that lists the artifacts the stage stored; 0 for none.
	ArtifactsSeq uint64 `json:"artifacts_seq,omitempty"`
	// ArtifactBytes is their total size.
	ArtifactBytes int64 `json:"artifact_bytes,omitempty"`
	// NotBefore is when a retry may start (backoff); zero for no wait.
	NotBefore time.Time `json:"not_before,omitzero"`
	// Queued, Started and Finished time the current attempt. Heartbeats
	// are not recorded here: the last one of each stage is in the
	// heartbeats stream.
	Queued   time.Time `json:"queued,omitzero"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
}

// Document returns a copy of r as the runs bucket stores it: without its
// pipeline and stages.
func (r *Run) Document() *Run {
	d := *r
	d.Pipeline, d.Stages = nil, nil
	return &d
}

// Stage returns the entry of the stage with key, or nil. The entry may be
// changed: while an edit is open (BeginEdit) it is recorded as Edit does.
func (r *Run) Stage(key string) *StageRun {
	if r.Pipeline != nil && len(r.Stages) == len(r.Pipeline.Stages) {
		if i := r.Pipeline.Index(key); i >= 0 && r.Stages[i].Key == key {
			return r.Edit(i)
		}
	}
	for i := range r.Stages {
		if r.Stages[i].Key == key {
			return r.Edit(i)
		}
	}
	return nil
}

// PendingStage is the state of a stage no document records yet.
func PendingStage(key, queue string) StageRun {
	return StageRun{Key: key, State: StagePending, Queue: queue, ExitCode: -1}
}

// Pending reasons of a waiting run.
const (
	// PendingWIP: the repository's WIP limit is reached.
	PendingWIP = "wip"
	// PendingGroup: another run of the concurrency group is in flight.
	PendingGroup = "concurrency_group"
	// PendingBackpressure: a queue of the run holds too many pending jobs.
	PendingBackpressure = "backpressure"
	// PendingAdmission: the dispatcher has not decided yet.
	PendingAdmission = "admission"
)

// Pending says why a run waits.
type Pending struct {
	// Reason is one of the Pending* constants.
	Reason string `json:"reason"`
	// Detail explains it for people ("3 of 3 runs of acme/api in flight").
	Detail string `json:"detail,omitempty"`
	// Since is when the run started waiting for this reason.
	Since time.Time `json:"since"`
}
