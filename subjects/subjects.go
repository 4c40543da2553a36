package subjects

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Stream names.
const (
	// JobsStream holds stage jobs until an agent acknowledges them
	// (work-queue retention).
	JobsStream = "WEFT_JOBS"
	// EventsStream holds stage and run lifecycle events.
	EventsStream = "WEFT_EVENTS"
	// LogsStream holds stage output as line batches.
	LogsStream = "WEFT_LOGS"
	// TriggersStream holds triggers waiting for the dispatcher
	// (work-queue retention).
	TriggersStream = "WEFT_TRIGGERS"
	// DLQStream holds stage jobs that exhausted their deliveries
	// (weft.dlq.<queue>) and triggers the dispatchers gave up
	// (weft.dlq.triggers.<repo>).
	DLQStream = "WEFT_DLQ"
	// AdvisoriesStream keeps the server's max-deliveries advisories of the
	// jobs stream and of the dispatchers' triggers consumer, so that a dead
	// job or trigger is handled even when no dispatcher was listening at
	// the time.
	AdvisoriesStream = "WEFT_ADVISORIES"
	// WaitingStream holds one message per run waiting for admission, in
	// arrival order (weft.waiting.<repo>.<seq>); it is deleted once the
	// run is admitted or ends.
	WaitingStream = "WEFT_WAITING"
	// HeartbeatsStream keeps the last heartbeat of every running stage
	// (one message per subject), read only when a stage's job is gone.
	HeartbeatsStream = "WEFT_HEARTBEATS"
	// DeliveriesStream holds the webhook deliveries the bridge accepted,
	// until its resolver has turned each into a trigger.
	DeliveriesStream = "WEFT_DELIVERIES"
	// StatusesStream holds the latest commit status to post for each
	// repository, commit and context.
	StatusesStream = "WEFT_STATUSES"
	// AuditStream keeps every operator action, weft.audit.<action>, one
	// message each (a wire.AuditEntry), for AuditRetention(keep).
	AuditStream = "WEFT_AUDIT"
)

// KV and object bucket names.
const (
	// RunsBucket holds one run document per run id (the run's own state,
	// without its stages), updated by CAS.
	RunsBucket = "weft_runs"
	// StagesBucket holds one stage document per stage of a run,
	// <run>.<stage>, updated by CAS; a stage with no key is pending.
	StagesBucket = "weft_stages"
	// PipelinesBucket is the object store of pipeline specs, one object
	// per content hash, shared by every run of the same pipeline.
	PipelinesBucket = "weft_pipelines"
	// WIPBucket holds admission state: per-repository WIP leases and
	// concurrency-group locks (no TTL: they go when their run ends),
	// queue pauses and counters.
	WIPBucket = "weft_wip"
	// DedupBucket holds one create-only key per trigger with a TTL; its
	// value is the trigger's outcome (the run id, or why it was refused).
	DedupBucket = "weft_dedup"
	// AgentsBucket is the agent registry; entries expire unless renewed.
	AgentsBucket = "weft_agents"
	// KeysBucket holds the fleet's keys: the artifact URL signing keys
	// (ArtifactURLKey, ArtifactURLPreviousKey).
	KeysBucket = "weft_keys"
	// ReposBucket holds the repositories' settings, one key per
	// repository token (RepoToken).
	ReposBucket = "weft_repos"
	// TokensBucket holds the HTTP API's tokens, one key per token: the
	// SHA-256 of its secret (package tokens).
	TokensBucket = "weft_tokens"
	// ArtifactURLKey is the current signing key of artifact download
	// URLs in KeysBucket; ArtifactURLPreviousKey the one it replaced,
	// still accepted.
	ArtifactURLKey         = "artifact-url.current"
	ArtifactURLPreviousKey = "artifact-url.previous"
	// ArtifactsBucket is the object store for stage artifacts.
	ArtifactsBucket = "weft_artifacts"
	// CacheBucket is the object store of stage cache entries, one
	// archive per saved key: <repo>/<id>.
	CacheBucket = "weft_cache"
	// CacheIndexBucket indexes CacheBucket: <repo>.<key hash> names the
	// entry of a repository's cache key, created once, never replaced.
	CacheIndexBucket = "weft_cache_index"
)

// Consumer names.
const (
	// DispatcherTriggers is the durable consumer the dispatchers share on
	// TriggersStream.
	DispatcherTriggers = "dispatcher_triggers"
	// DispatcherEvents is the durable consumer the dispatchers share on
	// EventsStream.
	DispatcherEvents = "dispatcher_events"
	// DispatcherDeadLetters is the durable consumer the dispatchers share
	// on AdvisoriesStream.
	DispatcherDeadLetters = "dispatcher_dead_letters"
)

// Subject templates and wildcards. Use the builders below to fill them.
const (
	jobsPrefix     = "weft.jobs"
	wakePrefix     = "weft.wake"
	eventsPrefix   = "weft.events"
	logsPrefix     = "weft.logs"
	triggersPrefix = "weft.triggers"
	dlqPrefix      = "weft.dlq"
	cancelPrefix   = "weft.cancel"
	beatsPrefix    = "weft.heartbeats"
	waitingPrefix  = "weft.waiting"
	scannedPrefix  = "weft.scanned"
	agentsPrefix   = "weft.agents"
	queuesPrefix   = "weft.queues"
	deliveryPrefix = "weft.deliveries"
	statusPrefix   = "weft.statuses"
	auditPrefix    = "weft.audit"

	// AllJobs matches every job subject.
	AllJobs = jobsPrefix + ".>"
	// AllWake matches every wake-up subject.
	AllWake = wakePrefix + ".>"
	// AllEvents matches every event subject.
	AllEvents = eventsPrefix + ".>"
	// AllLogs matches every log subject.
	AllLogs = logsPrefix + ".>"
	// AllTriggers matches every trigger subject.
	AllTriggers = triggersPrefix + ".>"
	// AllDLQ matches every dead-letter subject.
	AllDLQ = dlqPrefix + ".>"
	// AllWaiting matches every waiting run's subject.
	AllWaiting = waitingPrefix + ".>"
	// AllHeartbeats matches every heartbeat subject.
	AllHeartbeats = beatsPrefix + ".>"
	// AllCancel matches every cancel notice.
	AllCancel = cancelPrefix + ".*"
	// MaxDeliveries matches the server's advisories for job messages that
	// exhausted their deliveries.
	MaxDeliveries = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + JobsStream + ".*"
	// TriggerMaxDeliveries matches the server's advisories for trigger
	// messages whose last delivery no dispatcher acked.
	TriggerMaxDeliveries = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + TriggersStream + "." + DispatcherTriggers
	// RunEvents matches run-level events of every run (weft.events.<run>).
	RunEvents = eventsPrefix + ".*"
	// AllDeliveries matches every accepted webhook delivery.
	AllDeliveries = deliveryPrefix + ".>"
	// AllStageEvents matches the stage events of every run
	// (weft.events.<run>.<stage>), an agent's.
	AllStageEvents = eventsPrefix + ".*.*"
	// AllDrains matches every agent's drain requests.
	AllDrains = agentsPrefix + ".*.drain"
	// AllQueueOpens matches every queue's open requests (QueueOpen).
	AllQueueOpens = queuesPrefix + ".*.open"
	// AllAudit matches every audit entry's subject (Audit).
	AllAudit = auditPrefix + ".>"
)

// Delivery returns the subject of an accepted webhook delivery for repo.
func Delivery(repo string) string { return deliveryPrefix + "." + RepoToken(repo) }

// Status returns the subject of the commit status of repo, commit and
// context: one message each, the latest (the stream keeps one per
// subject, so updates that pile up coalesce).
func Status(repo, commit, context string) string {
	sum := sha256.Sum256([]byte(repo + "\x00" + commit + "\x00" + context))
	return statusPrefix + "." + hex.EncodeToString(sum[:12])
}

// AllStatuses matches every commit status subject.
const AllStatuses = statusPrefix + ".>"

// StatusSender and StatusEvents are the durable consumers of the commit
// status reporter: on the statuses stream, and on the events stream.
const (
	StatusSender = "github_status_sender"
	StatusEvents = "github_status_events"
)

// StatusRetention is how long a commit status not yet sent is kept.
const StatusRetention = 72 * time.Hour

// DeliveryResolver is the durable consumer of the webhook bridge's
// resolvers on the deliveries stream.
const DeliveryResolver = "webhook_resolver"

// DeliveryDuplicates is the deliveries stream's duplicate window: the
// same delivery (its X-GitHub-Delivery id) posted again within it is
// stored once.
const DeliveryDuplicates = time.Hour

// QueueOpenGroup is the queue group of the dispatchers' subscriptions to
// queue open requests: one dispatcher answers each.
const QueueOpenGroup = "weft_dispatchers"

// QueueOpen is the subject an agent asks on for the job consumers of a
// job queue to be created (core NATS request-reply, a wire.QueueOpen
// answered with a wire.QueueOpenReply): agents with credentials may not
// create consumers, dispatchers may.
func QueueOpen(queue string) string { return queuesPrefix + "." + queue + ".open" }

// Job returns the subject a stage job for queue and tier is published on:
// weft.jobs.<queue>.<tier>.
func Job(queue string, tier Tier) string {
	return jobsPrefix + "." + queue + "." + string(tier)
}

// ParseJob returns the queue and tier of a job subject (Job), and false
// for any other subject.
func ParseJob(subject string) (string, Tier, bool) {
	rest, ok := strings.CutPrefix(subject, jobsPrefix+".")
	if !ok {
		return "", "", false
	}
	queue, tier, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(tier, ".") {
		return "", "", false
	}
	t, err := ParseTier(tier)
	return queue, t, err == nil
}

// Wake returns the subject a stored job on queue is republished to, with
// any tier: weft.wake.<queue>.*.
func Wake(queue string) string { return wakePrefix + "." + queue + ".*" }

// WakeGroup is the queue group of the agents' wake-up subscriptions: the
// server hands each wake-up to one member, and an agent is a member only
// while it has a free slot.
const WakeGroup = "weft_agents"

// Scanned returns the subject of the notices an agent publishes as it
// starts a sweep of queue (a fetch from every tier): weft.scanned.<queue>.
// Every agent of the queue hears them and postpones its own rescan, so a
// fleet rescans a queue about once per rescan interval, not once per
// agent.
func Scanned(queue string) string { return scannedPrefix + "." + queue }

// WakeFor returns the subject a stored job of queue and tier is
// republished to: weft.wake.<queue>.<tier>.
func WakeFor(queue string, tier Tier) string { return wakePrefix + "." + queue + "." + string(tier) }

// StageEvent returns the subject of a stage's lifecycle events:
// weft.events.<run>.<stage>.
func StageEvent(run, stage string) string { return eventsPrefix + "." + run + "." + stage }

// Heartbeat returns the subject of a running stage's heartbeats:
// weft.heartbeats.<run>.<stage>. They are kept apart from the lifecycle
// events, so that no dispatcher handles them.
func Heartbeat(run, stage string) string { return beatsPrefix + "." + run + "." + stage }

// Waiting returns the subject of a run waiting for admission:
// weft.waiting.<repo>.<seq>, where seq is the trigger's stream sequence,
// zero-padded so subjects sort like numbers.
func Waiting(repo string, seq uint64) string {
	return fmt.Sprintf("%s.%s.%020d", waitingPrefix, RepoToken(repo), seq)
}

// RepoWaiting matches the waiting runs of one repository; token is
// RepoToken(repo).
func RepoWaiting(token string) string { return waitingPrefix + "." + token + ".*" }

// WaitingRepoToken returns the repository token of a waiting run's
// subject, or "" for another subject.
func WaitingRepoToken(subject string) string {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 || parts[0]+"."+parts[1] != waitingPrefix {
		return ""
	}
	return parts[2]
}

// StageKey returns the key of a stage's document in StagesBucket:
// <run>.<stage>.
func StageKey(run, stage string) string { return run + "." + stage }

// RunStages matches the keys of every stage document of run.
func RunStages(run string) string { return run + ".*" }

// StageOfKey returns the stage key of a stage document's key.
func StageOfKey(key string) string { return key[strings.LastIndexByte(key, '.')+1:] }

// RunEvent returns the subject of a run's own events: weft.events.<run>.
func RunEvent(run string) string { return eventsPrefix + "." + run }

// Logs returns the subject of a stage's log batches: weft.logs.<run>.<stage>.
func Logs(run, stage string) string { return logsPrefix + "." + run + "." + stage }

// LogStage returns the stage key of a log subject (see Logs).
func LogStage(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

// RunLogs matches the log batches of every stage of run: weft.logs.<run>.*.
func RunLogs(run string) string { return logsPrefix + "." + run + ".*" }

// Trigger returns the subject a trigger for repo is published on:
// weft.triggers.<repo>. Use RepoToken to turn a repository name into a token.
func Trigger(repo string) string { return triggersPrefix + "." + RepoToken(repo) }

// DLQ returns the subject a dead job of queue is kept on: weft.dlq.<queue>.
func DLQ(queue string) string { return dlqPrefix + "." + queue }

// Cancel returns the subject of a run's cancel notice: weft.cancel.<run>.
func Cancel(run string) string { return cancelPrefix + "." + run }

// DLQMsgID returns the Nats-Msg-Id of a dead job's copy in the DLQ.
func DLQMsgID(run, stage string, job int) string {
	return fmt.Sprintf("dlq.%s.%s.%d", run, stage, job)
}

// AgentDrain is the subject an agent takes drain requests on (core NATS
// request-reply; the agent answers with a wire.DrainReply).
func AgentDrain(id string) string { return agentsPrefix + "." + id + ".drain" }

// Audit returns the subject an operator action is recorded on:
// weft.audit.<action>, each dot of the action a token boundary
// (weft.audit.runs.cancel), so a filter selects a family of actions.
// action must pass ValidateAuditAction.
func Audit(action string) string { return auditPrefix + "." + action }

// AuditAction returns the action of an audit subject (see Audit).
func AuditAction(subject string) string { return strings.TrimPrefix(subject, auditPrefix+".") }

// maxAuditTokens bounds the dot-separated tokens of an audit action.
const maxAuditTokens = 4

var auditTokenRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// ValidateAuditAction checks that action names an operator action: two
// to four dot-separated tokens of a-z, 0-9, '_' and '-' (at most 32
// characters each, starting with a letter or digit), what then how:
// intake.pause, runs.cancel, run.priority. The error wraps
// ErrInvalidName.
func ValidateAuditAction(action string) error {
	tokens := strings.Split(action, ".")
	if len(tokens) < 2 || len(tokens) > maxAuditTokens {
		return fmt.Errorf("%w: audit action %q must be 2 to %d dot-separated tokens, such as intake.pause", ErrInvalidName, action, maxAuditTokens)
	}
	return validateAuditTokens(action, tokens)
}

func validateAuditTokens(action string, tokens []string) error {
	for _, tok := range tokens {
		if !auditTokenRE.MatchString(tok) {
			return fmt.Errorf("%w: audit action %q: token %q must be 1-32 characters of a-z, 0-9, '_' and '-', starting with a letter or digit", ErrInvalidName, action, tok)
		}
	}
	return nil
}

// AuditFilter returns the subject filter of the audit entries of action:
// the one action (runs.cancel), or, for a prefix ending in a dot
// (runs.), every action that starts with it; "" selects every entry
// (AllAudit). The error wraps ErrInvalidName.
func AuditFilter(action string) (string, error) {
	if action == "" {
		return AllAudit, nil
	}
	prefix, ok := strings.CutSuffix(action, ".")
	if !ok {
		if err := ValidateAuditAction(action); err != nil {
			if !strings.Contains(action, ".") {
				return "", fmt.Errorf("%w; a prefix selecting a family of actions ends in a dot: %s.", err, action)
			}
			return "", err
		}
		return Audit(action), nil
	}
	tokens := strings.Split(prefix, ".")
	if len(tokens) >= maxAuditTokens {
		return "", fmt.Errorf("%w: audit action prefix %q has %d tokens; an action has at most %d", ErrInvalidName, action, len(tokens), maxAuditTokens)
	}
	if err := validateAuditTokens(action, tokens); err != nil {
		return "", err
	}
	return auditPrefix + "." + prefix + ".>", nil
}

// EventMsgID returns the Nats-Msg-Id of an agent's stage event of type
// typ (started, finished) for job and attempt, so that an event sent
// again after its acknowledgement was lost is stored once.
func EventMsgID(run, stage string, job, attempt int, typ string) string {
	return fmt.Sprintf("event.%s.%s.%d.%d.%s", run, stage, job, attempt, typ)
}

// JobMsgID returns the Nats-Msg-Id of a stage attempt's job, so that
// publishing the same attempt twice stores it once.
func JobMsgID(run, stage string, attempt int) string {
	return fmt.Sprintf("%s.%s.%d", run, stage, attempt)
}

// RepoToken turns a repository name into a single subject and KV-key
// token, injectively: letters, digits and '-' stay as they are, and every
// other byte (including '_' itself) becomes '_' and two hex digits, so
// "acme/api" is "acme_2fapi" and "acme_api" is "acme_5fapi". An empty name
// (a local run) becomes "_", which no other name produces.
func RepoToken(repo string) string {
	if repo == "" {
		return "_"
	}
	var b strings.Builder
	for i := 0; i < len(repo); i++ {
		c := repo[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	return b.String()
}

// RepoName inverts RepoToken: "acme_2fapi" is "acme/api" and "_"
// the empty name of local runs. It reports false for a string RepoToken
// does not make.
func RepoName(token string) (string, bool) {
	if token == "_" {
		return "", true
	}
	if token == "" {
		return "", false
	}
	var b strings.Builder
	for i := 0; i < len(token); i++ {
		c := token[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-':
			b.WriteByte(c)
		case c == '_' && i+2 < len(token):
			n, err := strconv.ParseUint(token[i+1:i+3], 16, 8)
			if err != nil {
				return "", false
			}
			b.WriteByte(byte(n))
			i += 2
		default:
			return "", false
		}
	}
	name := b.String()
	return name, RepoToken(name) == token // refuses "_2F", and "_61" for "a"
}

// Tier is a priority tier. Agents take jobs from the highest non-empty tier.
type Tier string

// The tiers, highest first.
const (
	Critical Tier = "critical"
	High     Tier = "high"
	Normal   Tier = "normal"
	Low      Tier = "low"
)

// Tiers lists every tier, highest first: the order agents scan in.
var Tiers = [...]Tier{Critical, High, Normal, Low}

// ErrInvalidName is wrapped by every name validation error of this package.
var ErrInvalidName = errors.New("subjects: invalid name")

// ParseTier returns the tier named s. It returns an error wrapping
// ErrInvalidName for anything but critical, high, normal or low.
func ParseTier(s string) (Tier, error) {
	for _, t := range Tiers {
		if string(t) == s {
			return t, nil
		}
	}
	return "", fmt.Errorf("%w: priority %q is not one of critical, high, normal, low", ErrInvalidName, s)
}

// DefaultQueue is the queue of stages and agents that name none.
const DefaultQueue = "default"

var queueRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidateQueue checks that name can be used as a queue: 1 to 63 characters
// of [a-z0-9_-], starting with a letter or digit. The error wraps
// ErrInvalidName.
func ValidateQueue(name string) error {
	if !queueRE.MatchString(name) {
		return fmt.Errorf("%w: queue %q must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit", ErrInvalidName, name)
	}
	return nil
}

// JobConsumer returns the durable consumer name for one queue and tier.
func JobConsumer(queue string, tier Tier) string {
	return "jobs_" + queue + "_" + string(tier)
}

// Retention is a stream's retention policy.
type Retention int

// Retention policies.
const (
	// Limits keeps messages until a limit (age, size, count) removes them.
	Limits Retention = iota
	// WorkQueue removes a message once a consumer acknowledges it.
	WorkQueue
)

// Stream is the configuration of one stream.
type Stream struct {
	// Name is the stream name.
	Name string
	// Description is shown by `nats stream info`.
	Description string
	// Subjects are the subjects the stream stores.
	Subjects []string
	// Retention is the retention policy.
	Retention Retention
	// MaxAge removes older messages; 0 keeps them forever.
	MaxAge time.Duration
	// MaxMsgsPerSubject keeps only the last this many messages of each
	// subject; 0 is no limit.
	MaxMsgsPerSubject int64
	// Duplicates is the Nats-Msg-Id deduplication window.
	Duplicates time.Duration
	// MaxMsgSize bounds one message; 0 is the server's limit.
	MaxMsgSize int32
	// RepublishSource and RepublishDest, when set, republish every stored
	// message matching the source (headers only) to the destination.
	RepublishSource, RepublishDest string
	// AllowMsgTTL lets publishers set a per-message TTL.
	AllowMsgTTL bool
}

// Bucket is the configuration of one KV bucket.
type Bucket struct {
	// Name is the bucket name.
	Name string
	// Description is shown by `nats kv info`.
	Description string
	// History is how many revisions of a key are kept.
	History uint8
	// TTL expires every key this long after its last write; 0 is never.
	TTL time.Duration
	// PerKeyTTL allows a TTL per key (LimitMarkerTTL in JetStream), and
	// is the delete-marker lifetime.
	PerKeyTTL time.Duration
}

// ObjectBucket is the configuration of one object store bucket.
type ObjectBucket struct {
	// Name is the bucket name.
	Name string
	// Description is shown by `nats object info`.
	Description string
	// MaxAge is the retention of objects.
	MaxAge time.Duration
}

// JobConsumerConfig is the configuration of the durable job consumer of one
// queue and tier.
type JobConsumerConfig struct {
	// Name is the durable name.
	Name string
	// FilterSubject is the one job subject this consumer takes.
	FilterSubject string
	// AckWait is how long a job may go without an ack or heartbeat before
	// it is redelivered.
	AckWait time.Duration
	// MaxDeliver bounds deliveries of one job.
	MaxDeliver int
}

// Defaults of the job consumers.
const (
	// DefaultAckWait is how long an agent may be silent about a job before
	// it is redelivered; agents heartbeat every third of it.
	DefaultAckWait = 30 * time.Second
	// DefaultMaxDeliver is how often a job is delivered before it is dead.
	DefaultMaxDeliver = 5
	// DefaultRetention is how long run and stage documents, lifecycle
	// events, logs, dead letters and artifacts are kept (see Streams).
	DefaultRetention = 30 * 24 * time.Hour
	// HeartbeatRetention is how long a stage's last heartbeat is kept: it
	// only says whether the stage's attempt is alive.
	HeartbeatRetention = time.Hour
	// DefaultDedupWindow is how long a trigger is remembered.
	DefaultDedupWindow = 60 * time.Second
	// DefaultWIPLimit is how many runs of one repository are in flight.
	DefaultWIPLimit = 3
	// TriggerDuplicates is the triggers stream's Nats-Msg-Id window. It is
	// short on purpose: the dedup bucket remembers admitted triggers for
	// the dedup window, and a refused trigger must be retryable with the
	// same delivery id once its retry-after has passed.
	TriggerDuplicates = 5 * time.Second
	// AgentTTL is how long an agent stays in the registry after its last
	// renewal; agents renew every third of it.
	AgentTTL = 30 * time.Second
	// MaxPayload bounds a single message weft publishes (1 MiB, the
	// server's default max_payload).
	MaxPayload = 1 << 20
	// MinAuditRetention is the least time the audit stream keeps an
	// operator action (see AuditRetention).
	MinAuditRetention = 365 * 24 * time.Hour
)

// AuditRetention is how long the audit stream keeps an operator action
// when runs are kept for keep: as long as the runs, and at least
// MinAuditRetention. Who paused, cancelled or replayed what is asked
// about long after the runs it touched are gone, an entry is a few
// hundred bytes and actions are few, so a shorter --retention (set to
// save the space builds take) does not shorten the audit trail below a
// year.
func AuditRetention(keep time.Duration) time.Duration { return max(keep, MinAuditRetention) }

// JobConsumerFor returns the configuration of the job consumer for queue and
// tier, with the default AckWait and MaxDeliver.
func JobConsumerFor(queue string, tier Tier) JobConsumerConfig {
	return JobConsumerConfig{
		Name:          JobConsumer(queue, tier),
		FilterSubject: Job(queue, tier),
		AckWait:       DefaultAckWait,
		MaxDeliver:    DefaultMaxDeliver,
	}
}

// Streams returns the configuration of every stream weft uses, keeping
// what a run leaves behind (events, logs, dead letters) for keep; 0 is
// DefaultRetention. Jobs and triggers are work queues: they go when
// handled. The audit trail is kept for AuditRetention(keep).
func Streams(keep time.Duration) []Stream {
	if keep <= 0 {
		keep = DefaultRetention
	}
	return []Stream{
		{
			Name:            JobsStream,
			Description:     "weft stage jobs: weft.jobs.<queue>.<tier>, one durable consumer per queue and tier",
			Subjects:        []string{AllJobs},
			Retention:       WorkQueue,
			Duplicates:      2 * time.Minute,
			RepublishSource: AllJobs,
			RepublishDest:   wakePrefix + ".>",
		},
		{
			Name:        EventsStream,
			Description: "weft lifecycle events: weft.events.<run>[.<stage>]",
			Subjects:    []string{AllEvents},
			MaxAge:      keep,
			Duplicates:  min(2*time.Minute, keep),
		},
		{
			Name:        LogsStream,
			Description: "weft stage output line batches: weft.logs.<run>.<stage>",
			Subjects:    []string{AllLogs},
			MaxAge:      keep,
		},
		{
			Name:        TriggersStream,
			Description: "weft triggers waiting for a dispatcher: weft.triggers.<repo>",
			Subjects:    []string{AllTriggers},
			Retention:   WorkQueue,
			Duplicates:  TriggerDuplicates,
		},
		{
			Name:        AdvisoriesStream,
			Description: "max-deliveries advisories of WEFT_JOBS and of the triggers consumer, for the dispatchers' dead-letter handling",
			Subjects:    []string{MaxDeliveries, TriggerMaxDeliveries},
			MaxAge:      keep,
		},
		{
			Name:        DLQStream,
			Description: "weft stage jobs that exhausted their deliveries (weft.dlq.<queue>) and triggers given up (weft.dlq.triggers.<repo>)",
			Subjects:    []string{AllDLQ},
			MaxAge:      keep,
		},
		{
			Name:              WaitingStream,
			Description:       "weft runs waiting for admission, in arrival order: weft.waiting.<repo>.<seq>, deleted once admitted or ended",
			Subjects:          []string{AllWaiting},
			MaxMsgsPerSubject: 1,
		},
		{
			Name:        DeliveriesStream,
			Description: "webhook deliveries accepted by the bridge, weft.deliveries.<repo>, until resolved into triggers",
			Subjects:    []string{AllDeliveries},
			Retention:   WorkQueue,
			Duplicates:  DeliveryDuplicates,
		},
		{
			Name:              StatusesStream,
			Description:       "commit statuses to post to GitHub: weft.statuses.<hash of repo, commit, context>, the latest of each",
			Subjects:          []string{AllStatuses},
			MaxAge:            StatusRetention,
			MaxMsgsPerSubject: 1,
		},
		{
			Name:        AuditStream,
			Description: "weft operator actions: weft.audit.<action> (intake.pause, queue.pause, runs.cancel, ...), who did what, with which filter, to how many",
			Subjects:    []string{AllAudit},
			MaxAge:      AuditRetention(keep),
			Duplicates:  2 * time.Minute,
		},
		{
			Name:              HeartbeatsStream,
			Description:       "weft heartbeats of running stages: weft.heartbeats.<run>.<stage>, the last one of each",
			Subjects:          []string{AllHeartbeats},
			MaxAge:            HeartbeatRetention,
			MaxMsgsPerSubject: 1,
		},
	}
}

// Buckets returns the configuration of every KV bucket weft uses, keeping
// run and stage documents for keep after their last change; 0 is
// DefaultRetention.
func Buckets(keep time.Duration) []Bucket {
	if keep <= 0 {
		keep = DefaultRetention
	}
	return []Bucket{
		{Name: RunsBucket, Description: "weft run documents, one per run id", History: 1, TTL: keep},
		{Name: StagesBucket, Description: "weft stage documents, <run>.<stage>; a stage with no key is pending", History: 1, TTL: keep},
		{Name: WIPBucket, Description: "weft admission: lease.<repo>.<slot> WIP leases, group.<repo>.<group> concurrency locks, pause.<queue>, stats.<name>", History: 1, PerKeyTTL: time.Minute},
		{Name: DedupBucket, Description: "weft trigger dedup keys and outcomes", History: 1, PerKeyTTL: time.Minute},
		{Name: AgentsBucket, Description: "weft agent registry: one key per agent id, renewed while it runs", History: 1, TTL: AgentTTL},
		{Name: KeysBucket, Description: "weft keys: artifact-url.current and .previous sign artifact download URLs", History: 1},
		{Name: ReposBucket, Description: "weft repository settings: one key per repository (clone URL, webhook secret, pipeline path, rules)", History: 5},
		{Name: TokensBucket, Description: "weft API tokens: one key per token, the SHA-256 of its secret; the value names its role", History: 1},
		{Name: CacheIndexBucket, Description: "weft cache index: <repo>.<key hash> names a cache entry, created once; rewritten when used", History: 1, TTL: keep},
	}
}

// ObjectBuckets returns the configuration of every object store bucket,
// keeping artifacts and cache entries for keep (0 is DefaultRetention)
// and pipeline specs for PipelineRetention(keep).
func ObjectBuckets(keep time.Duration) []ObjectBucket {
	if keep <= 0 {
		keep = DefaultRetention
	}
	return []ObjectBucket{
		{Name: ArtifactsBucket, Description: "weft stage artifacts", MaxAge: keep},
		{Name: CacheBucket, Description: "weft stage caches, one archive per saved key", MaxAge: keep},
		{Name: PipelinesBucket, Description: "weft pipeline specs, one per content hash", MaxAge: PipelineRetention(keep)},
	}
}

// PipelineRetention is how long a pipeline spec is kept when runs are
// kept for keep: one and a half times as long. A spec is shared by every
// run of the same pipeline, and whoever stores a run rewrites a spec
// older than SpecRefresh(keep), so a spec outlives every run document
// that names it by at least keep/4 plus the run's own duration, up to
// runs lasting a quarter of keep.
func PipelineRetention(keep time.Duration) time.Duration { return keep + keep/2 }

// SpecRefresh is the age past which a pipeline spec is stored again for
// a new run (see PipelineRetention).
func SpecRefresh(keep time.Duration) time.Duration { return keep / 4 }

// DedupKey returns the dedup bucket key of a trigger id: a hash, so that any
// delivery id is a valid key and the key says nothing about the repository.
func DedupKey(triggerID string) string {
	sum := sha256.Sum256([]byte(triggerID))
	return hex.EncodeToString(sum[:16])
}

// Keys of the WIP bucket. A repository's keys share the token
// RepoToken(repo), so one filter lists them. Every key pattern and parser
// of the bucket is here.
const (
	leaseKind = "lease"
	groupKind = "group"
	statsKind = "stats"
	pauseKind = "pause"

	// AllLeases matches every WIP lease: lease.<repo>.<slot>.
	AllLeases = leaseKind + ".>"
	// AllGroups matches every concurrency-group lock: group.<repo>.<hash>.
	AllGroups = groupKind + ".>"
	// AllStats matches every counter: stats.<name>.
	AllStats = statsKind + ".>"
	// AllPauses matches every paused queue: pause.<queue>.
	AllPauses = pauseKind + ".*"
)

// LeaseKey is the key of WIP slot slot of repo: lease.<repo>.<slot>.
func LeaseKey(repo string, slot int) string {
	return fmt.Sprintf("%s.%s.%d", leaseKind, RepoToken(repo), slot)
}

// GroupKey is the key of the lock of a concurrency group of repo:
// group.<repo>.<hash of group>.
func GroupKey(repo, group string) string {
	sum := sha256.Sum256([]byte(group))
	return groupKind + "." + RepoToken(repo) + "." + hex.EncodeToString(sum[:12])
}

// RepoLeases is the filter of one repository's leases; token is
// RepoToken(repo).
func RepoLeases(token string) string { return leaseKind + "." + token + ".*" }

// KeyRepoToken returns the repository token of a lease or group key of
// the WIP bucket, or "" for any other key.
func KeyRepoToken(key string) string {
	parts := strings.SplitN(key, ".", 3)
	if len(parts) < 3 {
		return ""
	}
	switch parts[0] {
	case leaseKind, groupKind:
		return parts[1]
	}
	return ""
}

// StatsKey is the key of the counter name: stats.<name>.
func StatsKey(name string) string { return statsKind + "." + name }

// StatsName returns the counter name of a stats key.
func StatsName(key string) string { return strings.TrimPrefix(key, statsKind+".") }

// PauseKey is the key of the WIP bucket that pauses queue: agents take no
// job from a paused queue until the key is deleted.
func PauseKey(queue string) string { return pauseKind + "." + queue }

// PausedQueue returns the queue of a pause key.
func PausedQueue(key string) string { return strings.TrimPrefix(key, pauseKind+".") }

// KVSubject returns the subject a KV bucket stores key on, for reading a
// key's raw message (its headers) from the bucket's stream.
func KVSubject(bucket, key string) string { return "$KV." + bucket + "." + key }

// CancelRun returns the run id of a cancel notice subject (see Cancel).
func CancelRun(subject string) string { return strings.TrimPrefix(subject, cancelPrefix+".") }

// Headers of a dead job's copy in the DLQ.
const (
	// HeaderRun is the run id.
	HeaderRun = "Weft-Run"
	// HeaderStage is the stage key.
	HeaderStage = "Weft-Stage"
	// HeaderJob is the job's attempt number.
	HeaderJob = "Weft-Job"
	// HeaderSubject is the job subject it was on.
	HeaderSubject = "Weft-Subject"
	// HeaderDeliveries is how often it was delivered.
	HeaderDeliveries = "Weft-Deliveries"
)

// LeaseSlot returns the slot number of a lease key.
func LeaseSlot(key string) (int, bool) {
	i := strings.LastIndexByte(key, '.')
	if !strings.HasPrefix(key, leaseKind+".") || i < 0 {
		return 0, false
	}
	n, err := strconv.Atoi(key[i+1:])
	return n, err == nil && n >= 0
}
