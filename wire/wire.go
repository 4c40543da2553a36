package wire

import (
	"maps"
	"strconv"
	"time"

	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/subjects"
)

// Trigger asks for a run of a pipeline. It is published on
// subjects.Trigger(repo) with Nats-Msg-Id set to ID.
type Trigger struct {
	// ID identifies the delivery (a webhook delivery id, or a ULID for a
	// CLI run); a second trigger with the same ID starts no second run.
	ID string `json:"id"`
	// Repo is the repository the pipeline belongs to.
	Repo string `json:"repo,omitempty"`
	// File names the pipeline file, for error messages.
	File string `json:"file"`
	// Pipeline is the pipeline file's text.
	Pipeline string `json:"pipeline"`
	// Branch and Commit are what the run builds.
	Branch string `json:"branch,omitempty"`
	Commit string `json:"commit,omitempty"`
	// CloneURL, when set, is where the stages fetch Commit from: their
	// workspace holds the repository at exactly that commit before their
	// first command.
	CloneURL string `json:"clone_url,omitempty"`
	// Untrusted marks a trigger from outside the repository (a pull
	// request from a fork): its stages get none of the repository's
	// secrets.
	Untrusted bool `json:"untrusted,omitempty"`
	// Variables are the run's own variables (NAME=value): every stage of
	// the run gets them, over the pipeline's and the stage's env.
	Variables map[string]string `json:"variables,omitempty"`
	// Priority overrides the pipeline's priority when set.
	Priority subjects.Tier `json:"priority,omitempty"`
	// Queue, when set, replaces the pipeline's queue for the stages that
	// run on it.
	Queue string `json:"queue,omitempty"`
	// Time is when the trigger was published.
	Time time.Time `json:"time"`
}

// Outcome is what became of a trigger, stored in the dedup bucket under the
// trigger's ID: the run it started, or why it was refused.
type Outcome struct {
	// RunID is the run the trigger started (or the first run, for a
	// duplicate).
	RunID string `json:"run_id,omitempty"`
	// Error says why the trigger was refused; empty when it was admitted.
	Error string `json:"error,omitempty"`
	// Reason classifies a refusal: "invalid" (the pipeline or trigger is
	// bad), "wip" (the repository's WIP limit is reached),
	// "backpressure" (a queue holds too many pending jobs) or
	// "dead_letter" (the dispatchers gave it up after its last delivery).
	Reason string `json:"reason,omitempty"`
	// RetryAfter is set on capacity refusals: when trying again may work.
	RetryAfter time.Duration `json:"retry_after,omitempty"`
}

// Refusal reasons of an Outcome.
const (
	RefusedInvalid      = "invalid"
	RefusedWIP          = "wip"
	RefusedBackpressure = "backpressure"
	// RefusedDeadLetter: the dispatchers failed on every delivery of the
	// trigger and moved it to the dead-letter stream; trying again may
	// work.
	RefusedDeadLetter = "dead_letter"
)

// Job is one attempt of one stage, published on subjects.Job(queue, tier)
// with Nats-Msg-Id subjects.JobMsgID(run, stage, attempt).
type Job struct {
	// RunID is the run the stage belongs to.
	RunID string `json:"run_id"`
	// Pipeline is the pipeline's name.
	Pipeline string `json:"pipeline"`
	// Repo is the run's repository ("" for a local run): stage caches
	// belong to it.
	Repo string `json:"repo,omitempty"`
	// Attempt is the stage attempt the job was queued as, counting from
	// 1. A job redelivered after an attempt of it started (its agent
	// died) runs as the next attempt of the same Job; one handed back
	// before it started runs as the same attempt.
	Attempt int `json:"attempt"`
	// Job is the stage's job number (wire.StageRun.Job): an agent runs
	// the job only while the run document says it is the stage's current
	// job.
	Job int `json:"job"`
	// Tier is the tier the job was queued at.
	Tier subjects.Tier `json:"tier"`
	// Epoch is the run's Replays when the job was queued (see
	// CancelNotice.Epoch).
	Epoch int `json:"epoch,omitempty"`
	// Stage is the stage's specification.
	Stage pipeline.Stage `json:"stage"`
	// Env is the stage's final environment: pipeline env, stage env and
	// the WEFT_* variables, in that order of precedence (last wins).
	Env map[string]string `json:"env"`
	// NotBefore is when the job may start (a retry's backoff); an agent
	// that gets it earlier hands it back with that delay.
	NotBefore time.Time `json:"not_before,omitzero"`
	// Restore are the artifacts of the stages this one depends on,
	// directly or not, restored into its workspace before its first
	// command.
	Restore []ArtifactSource `json:"restore,omitempty"`
	// ArtifactBytes is what the artifacts in Restore take: the per-run
	// limit bounds them with what the stage stores.
	ArtifactBytes int64 `json:"artifact_bytes,omitempty"`
	// CloneURL and Commit, when CloneURL is set, are the repository and
	// commit the workspace holds before the stage's first command.
	CloneURL string `json:"clone_url,omitempty"`
	Commit   string `json:"commit,omitempty"`
	// Token authenticates the fetch of a private repository; the
	// dispatcher adds it from the repository's settings, so it is in no
	// run document.
	Token string `json:"token,omitempty"`
}

// JobEnv returns the environment of a stage attempt: the pipeline's env,
// then the stage's, then the WEFT_* variables of the run.
func JobEnv(p *pipeline.Pipeline, st *pipeline.Stage, runID, branch, commit string, attempt int) map[string]string {
	env := make(map[string]string, len(p.Env)+len(st.Env)+7)
	maps.Copy(env, p.Env)
	maps.Copy(env, st.Env)
	env["WEFT_RUN_ID"] = runID
	env["WEFT_PIPELINE"] = p.Name
	env["WEFT_STAGE"] = st.Key
	env["WEFT_ATTEMPT"] = strconv.Itoa(attempt)
	env["WEFT_BRANCH"] = branch
	env["WEFT_COMMIT"] = commit
	env["WEFT_QUEUE"] = st.Queue
	return env
}

// EventType is the kind of a lifecycle event.
type EventType string

// Event types. Stage events are published on subjects.StageEvent, run
// events on subjects.RunEvent.
const (
	// Started: an agent started the stage's process or container.
	Started EventType = "started"
	// Heartbeat: the stage is still running on the agent.
	Heartbeat EventType = "heartbeat"
	// Finished: the stage ended; ExitCode and Category say how.
	Finished EventType = "finished"
	// CancelRequested: someone asked for the run to be cancelled.
	CancelRequested EventType = "cancel_requested"
	// RunFinished: the run reached a terminal state.
	RunFinished EventType = "run_finished"
	// ReplayRequested: someone asked for a dead-lettered stage to run
	// again (Stage names it).
	ReplayRequested EventType = "replay_requested"
	// RetryRequested: someone asked for an ended run's stages that did
	// not succeed to run again (weft retry, weft bulk requeue).
	RetryRequested EventType = "retry_requested"
	// PriorityRequested: someone asked for a run that has not ended to
	// move to another tier (Message names it).
	PriorityRequested EventType = "priority_requested"
)

// Category classifies why a stage failed.
type Category string

// Failure categories.
const (
	// CategoryNone: the stage succeeded.
	CategoryNone Category = ""
	// CategoryCommand: a command exited non-zero.
	CategoryCommand Category = "command"
	// CategoryTimeout: the stage ran past its timeout and was killed.
	CategoryTimeout Category = "timeout"
	// CategoryCancelled: the run was cancelled or the agent stopped.
	CategoryCancelled Category = "cancelled"
	// CategoryInfra: the stage could not be started (workspace, image,
	// executor).
	CategoryInfra Category = "infra"
	// CategoryOOM: the stage was killed for exceeding its memory limit.
	CategoryOOM Category = "oom"
	// CategoryDeadLetter: the stage's job exhausted its deliveries (its
	// agents kept dying) and was moved to the dead-letter stream.
	CategoryDeadLetter Category = "dead_letter"
	// CategoryArtifact: the stage's commands succeeded but its artifacts
	// were refused (a path leaving the workspace, a size over a limit).
	CategoryArtifact Category = "artifact"
)

// Event is a lifecycle event of a stage or a run.
type Event struct {
	// Type is the kind of event.
	Type EventType `json:"type"`
	// RunID is the run.
	RunID string `json:"run_id"`
	// Stage is the stage key; empty for run events.
	Stage string `json:"stage,omitempty"`
	// Attempt is the stage attempt the event is about.
	Attempt int `json:"attempt,omitempty"`
	// Job is the job number of that attempt (wire.Job.Job): an attempt's
	// events count only while its job is the stage's current job.
	Job int `json:"job,omitempty"`
	// Agent is the id of the agent running the attempt.
	Agent string `json:"agent,omitempty"`
	// Time is when it happened, on the publisher's clock.
	Time time.Time `json:"time"`
	// ExitCode is the stage's exit code (Finished); -1 when it was killed.
	ExitCode int `json:"exit_code"`
	// Category says why a finished stage failed.
	Category Category `json:"category,omitempty"`
	// Message is a human explanation (an infra error, a cancel reason).
	Message string `json:"message,omitempty"`
	// LogSeq is the stream sequence of the attempt's last log batch
	// (Finished); 0 when it wrote nothing.
	LogSeq uint64 `json:"log_seq,omitempty"`
	// Artifacts are the files a succeeded attempt stored (Finished), in
	// path order.
	Artifacts []Artifact `json:"artifacts,omitempty"`
	// Seq is the events stream sequence the event was stored at, set by
	// its reader; never sent.
	Seq uint64 `json:"-"`
}

// Artifact is a file a stage stored in the artifact bucket (package
// objectstore), as its finished event lists it.
type Artifact struct {
	// Path is relative to the stage's workspace, slash-separated.
	Path string `json:"path"`
	Size int64  `json:"size"`
	// SHA256 is the hex SHA-256 digest of its content.
	SHA256 string `json:"sha256"`
}

// ArtifactSource names the artifacts of an earlier stage of the run that
// a job restores: those listed by the stage's finished event stored at
// sequence Seq of the events stream.
type ArtifactSource struct {
	Stage string `json:"stage"`
	Seq   uint64 `json:"seq"`
}

// LogBatch is a batch of output lines of one stage attempt, published on
// subjects.Logs(run, stage).
type LogBatch struct {
	// Attempt is the stage attempt that wrote the lines.
	Attempt int `json:"attempt"`
	// Seq numbers the attempt's batches from 1, consecutively, in the
	// order they were published: a follower that sees a number skipped
	// knows a batch was lost (its publish failed). A delivery that runs
	// an attempt again (the first one never started its commands)
	// numbers from 1 again.
	Seq uint64 `json:"seq"`
	// Lines are the lines in the order they were read.
	Lines []LogLine `json:"lines"`
}

// LogLine is one line of output.
type LogLine struct {
	// Stream is "output" for the combined stdout and stderr of a stage
	// (one pipe, so lines keep their order), or "system" for weft's own
	// notes in the log.
	Stream string `json:"stream"`
	// Text is the line without its newline. The agent splits a longer
	// line into consecutive lines of 16 KiB (agent.MaxLineBytes; the
	// pieces joined are the line), so that one line never outgrows a
	// message.
	Text string `json:"text"`
	// Time is when the agent read the line.
	Time time.Time `json:"time"`
}

// Agent is an agent's entry in the agent registry, kept under its ID and
// renewed while it runs.
type Agent struct {
	// ID is the agent's id.
	ID string `json:"id"`
	// Hostname is the machine it runs on.
	Hostname string `json:"hostname,omitempty"`
	// Queues are the queues it serves.
	Queues []string `json:"queues"`
	// Labels are its labels (weft agent --label k=v): it also runs the
	// stages of its queues that ask for some of them.
	Labels map[string]string `json:"labels,omitempty"`
	// Slots is how many stages it runs at once; Busy how many it runs now.
	Slots int `json:"slots"`
	Busy  int `json:"busy"`
	// Executor is its executor mode (auto, process, containerd).
	Executor string `json:"executor"`
	// Version is the weft version it runs.
	Version string `json:"version,omitempty"`
	// Stages are the stages it runs now, as RUN/STAGE.
	Stages []string `json:"stages,omitempty"`
	// Draining says it takes no more jobs and leaves once those it runs
	// are done.
	Draining bool `json:"draining,omitempty"`
	// Started is when it started; Seen when it last renewed its entry.
	Started time.Time `json:"started"`
	Seen    time.Time `json:"seen"`
}

// DrainReply is an agent's answer to a drain request
// (subjects.AgentDrain): it drains, and runs these stages still.
type DrainReply struct {
	Agent   string   `json:"agent"`
	Running []string `json:"running"`
}

// QueueOpen asks a dispatcher to create the job consumers of a job
// queue where they are missing (subjects.QueueOpen). AckWait and
// MaxDeliver set those of the consumers it creates; 0 is the default.
type QueueOpen struct {
	Queue      string        `json:"queue"`
	AckWait    time.Duration `json:"ack_wait,omitempty"`
	MaxDeliver int           `json:"max_deliver,omitempty"`
}

// QueueOpenReply is a dispatcher's answer to a QueueOpen: Error is empty
// when every consumer of the queue exists.
type QueueOpenReply struct {
	Error string `json:"error,omitempty"`
}

// CancelNotice is the body of a cancel notice (subjects.Cancel): the
// stages to stop, by key; none is every stage of the run.
type CancelNotice struct {
	// Stages are the stages to stop; none is the whole run.
	Stages []string `json:"stages,omitempty"`
	// Epoch is the run's Replays when it was cancelled: an agent does
	// not start a job of the run queued in that epoch or before, but does
	// one of a later retry.
	Epoch int `json:"epoch,omitempty"`
}

// Delivery is a webhook delivery the bridge accepted (stream
// WEFT_DELIVERIES), as much of it as a trigger needs: the payload itself
// can be up to 25 MB, far over a message's limit.
type Delivery struct {
	// ID is the delivery's X-GitHub-Delivery GUID: the same on a
	// redelivery.
	ID string `json:"id"`
	// Event is X-GitHub-Event (push, pull_request); Action the payload's
	// action for a pull request.
	Event  string `json:"event"`
	Action string `json:"action,omitempty"`
	// Repo is the repository's full name (owner/name).
	Repo string `json:"repo"`
	// Kind is the kind of event the repository's rules know (package
	// repos: default_branch, branch, tag, pull_request).
	Kind string `json:"kind"`
	// Ref is the full ref built (refs/heads/x, refs/tags/v1, or the pull
	// request's head branch); Branch the branch (or tag) name.
	Ref    string `json:"ref"`
	Branch string `json:"branch"`
	// Commit is the sha built.
	Commit string `json:"commit"`
	// PullRequest is the pull request's number; 0 for a push.
	PullRequest int `json:"pull_request,omitempty"`
	// Fork says the pull request's head is in another repository: its
	// runs get none of the repository's secrets.
	Fork bool `json:"fork,omitempty"`
	// Sender is who caused the delivery (the payload's sender.login).
	Sender string `json:"sender,omitempty"`
	// Time is when the bridge accepted it.
	Time time.Time `json:"time"`
}
