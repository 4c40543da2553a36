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

// Run is the run document, stored in the runs bucket under its ID and only
// ever changed by compare-and-set on the key's revision.
type Run struct {
	// ID is the run's ULID.
	ID string `json:"id"`
	// TriggerID is the delivery that started the run.
	TriggerID string `json:"trigger_id"`
	// Repo, Branch and Commit are what the run builds.
	Repo   string `json:"repo,omitempty"`
	Branch string `json:"branch,omitempty"`
	Commit string `json:"commit,omitempty"`
	// File is the pipeline file's name.
	File string `json:"file"`
	// Pipeline is the validated pipeline.
	Pipeline *pipeline.Pipeline `json:"pipeline"`
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
	// Stages holds one entry per pipeline stage, in file order.
	Stages []StageRun `json:"stages"`
	// CancelReason says who cancelled the run.
	CancelReason string `json:"cancel_reason,omitempty"`
	// Created, Started and Finished time the run.
	Created  time.Time `json:"created"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
}

// StageRun is the state of one stage of a run.
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
	// LogSeq is the stream sequence of the stage's last log batch.
	LogSeq uint64 `json:"log_seq,omitempty"`
	// JobSeq is the jobs stream sequence of the stage's job message, so
	// the reconcile loop can tell a job that is gone.
	JobSeq uint64 `json:"job_seq,omitempty"`
	// NotBefore is when a retry may start (backoff); zero for no wait.
	NotBefore time.Time `json:"not_before,omitzero"`
	// Queued, Started, Heartbeat and Finished time the current attempt.
	Queued    time.Time `json:"queued,omitzero"`
	Started   time.Time `json:"started,omitzero"`
	Heartbeat time.Time `json:"heartbeat,omitzero"`
	Finished  time.Time `json:"finished,omitzero"`
}

// Stage returns the entry of the stage with key, or nil.
func (r *Run) Stage(key string) *StageRun {
	for i := range r.Stages {
		if r.Stages[i].Key == key {
			return &r.Stages[i]
		}
	}
	return nil
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
