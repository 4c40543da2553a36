package auth

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/nats-io/jwt/v2"

	"github.com/weft-ci/weft/subjects"
)

// ErrInvalidGrant is wrapped by the errors of Grant.Validate.
var ErrInvalidGrant = errors.New("auth: invalid grant")

// Role is what a user of the weft account may do.
type Role string

// Roles.
const (
	// Dispatcher: everything in the account. Dispatchers admit runs,
	// write run state and create the job consumers agents pull from;
	// weft server's own connection has this role.
	Dispatcher Role = "dispatcher"
	// Agent: pull and acknowledge the jobs of its own queues (never create
	// a consumer for them), publish its stages' events, heartbeats and
	// logs, renew its registry entry, read stage documents and events,
	// and read and write artifacts and caches. It cannot read run
	// documents, other queues' jobs or triggers, nor publish a trigger;
	// nor read or write the audit stream (subjects.AuditStream).
	Agent Role = "agent"
	// Trigger: publish triggers (the webhook bridge, weft trigger, weft
	// run --server) and follow the runs they start, as a Viewer does.
	Trigger Role = "trigger"
	// Operator: everything in the account, for people who steer the
	// queues (status, pause, dead letters, cancel) and the nats CLI;
	// the CLI records each of their actions in the audit stream
	// (subjects.Audit), which they read with weft audit.
	Operator Role = "operator"
	// Viewer: read-only; streams' and consumers' information, run and
	// stage documents, events, logs, artifacts, the registry and the
	// audit stream. It cannot read jobs, dead letters (with the tokens
	// and secrets jobs carry) or triggers, publish (an audit entry
	// neither), or pull from a job consumer.
	Viewer Role = "viewer"
)

// Roles lists every role.
var Roles = []Role{Dispatcher, Agent, Trigger, Operator, Viewer}

// ParseRole returns the role named s.
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if !slices.Contains(Roles, r) {
		names := make([]string, len(Roles))
		for i, r := range Roles {
			names[i] = string(r)
		}
		return "", fmt.Errorf("%w: role %q: want one of %s", ErrInvalidGrant, s, strings.Join(names, ", "))
	}
	return r, nil
}

// Grant is what a user's credentials allow.
type Grant struct {
	// Role is the user's role.
	Role Role
	// Name names the user (shown in the server's connection list);
	// default the role.
	Name string
	// Queues are an agent's queues; required for Agent, none for other
	// roles.
	Queues []string
	// Labels are an agent's labels: it may take the jobs of the label
	// queue of each subset of them (subjects.ServedQueues).
	Labels map[string]string
	// JSDomain is the JetStream domain the user reaches weft's streams
	// in, when it connects to a leaf node; empty is the server's own.
	JSDomain string
}

// Validate checks g.
func (g Grant) Validate() error {
	if _, err := ParseRole(string(g.Role)); err != nil {
		return err
	}
	if g.Role == Agent && len(g.Queues) == 0 {
		return fmt.Errorf("%w: an agent's credentials need at least one queue (--queue)", ErrInvalidGrant)
	}
	if g.Role != Agent && (len(g.Queues) > 0 || len(g.Labels) > 0) {
		return fmt.Errorf("%w: queues and labels are an agent's; role %s takes none", ErrInvalidGrant, g.Role)
	}
	for _, q := range g.Queues {
		if err := subjects.ValidateQueue(q); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidGrant, err)
		}
	}
	if len(g.Labels) > subjects.MaxLabels {
		return fmt.Errorf("%w: %d labels: at most %d", ErrInvalidGrant, len(g.Labels), subjects.MaxLabels)
	}
	for k, v := range g.Labels {
		if err := subjects.ValidateLabel(k, v); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidGrant, err)
		}
	}
	if strings.ContainsAny(g.JSDomain, ".*> \t") {
		return fmt.Errorf("%w: JetStream domain %q", ErrInvalidGrant, g.JSDomain)
	}
	return nil
}

func (g Grant) name() string {
	if g.Name != "" {
		return g.Name
	}
	return string(g.Role)
}

// Tags of a user's JWT that carry its grant, so a client can configure
// itself from its credentials alone.
const (
	tagRole   = "weft-role:"
	tagQueue  = "weft-queue:"
	tagLabel  = "weft-label:"
	tagDomain = "weft-domain:"
)

func (g Grant) tags() []string {
	tags := []string{tagRole + string(g.Role)}
	for _, q := range g.Queues {
		tags = append(tags, tagQueue+q)
	}
	for _, k := range slices.Sorted(maps.Keys(g.Labels)) {
		tags = append(tags, tagLabel+k+"="+g.Labels[k])
	}
	if g.JSDomain != "" {
		tags = append(tags, tagDomain+g.JSDomain)
	}
	return tags
}

// InboxPrefix returns the inbox prefix of the user with public key pub:
// replies to it arrive on subjects only it may subscribe to, so one user
// cannot read the replies (fetched jobs among them) of another.
func InboxPrefix(pub string) string { return "_INBOX." + pub }

// apis returns the JetStream API prefixes of g: the server's own and,
// with a domain, the domain's.
func (g Grant) apis() []string {
	out := []string{"$JS.API"}
	if g.JSDomain != "" {
		out = append(out, "$JS."+g.JSDomain+".API")
	}
	return out
}

// perms collects allowed subjects.
type perms struct {
	apis     []string
	pub, sub []string
	// deny lists published subjects denied among those allowed.
	deny []string
}

// api allows the JetStream API calls op.rest... under every prefix.
func (p *perms) api(parts ...string) {
	for _, a := range p.apis {
		p.pub = append(p.pub, a+"."+strings.Join(parts, "."))
	}
}

// reads allows reading the messages of stream: its information, getting
// a message, and reading it with ephemeral (ordered) consumers, as KV
// gets and watches and object store reads do.
func (p *perms) reads(stream string) {
	p.api("STREAM", "INFO", stream)
	p.api("STREAM", "MSG", "GET", stream)
	p.api("DIRECT", "GET", stream)
	p.api("DIRECT", "GET", stream, ">")
	p.api("CONSUMER", "CREATE", stream)
	p.api("CONSUMER", "CREATE", stream, ">")
	p.api("CONSUMER", "DELETE", stream, ">")
	p.api("CONSUMER", "INFO", stream, ">")
	p.api("CONSUMER", "MSG", "NEXT", stream, ">")
	p.pub = append(p.pub, "$JS.FC."+stream+".>")
}

// inspects allows the information and lists of streams and consumers.
func (p *perms) inspects() {
	p.api("INFO")
	p.api("STREAM", "INFO", "*")
	p.api("STREAM", "LIST")
	p.api("STREAM", "NAMES")
	p.api("CONSUMER", "INFO", "*", "*")
	p.api("CONSUMER", "LIST", "*")
	p.api("CONSUMER", "NAMES", "*")
}

func kvStream(bucket string) string  { return "KV_" + bucket }
func objStream(bucket string) string { return "OBJ_" + bucket }

// permissions returns the permissions of g for the user with public key
// pub.
func (g Grant) permissions(pub string) jwt.Permissions {
	switch g.Role {
	case Dispatcher, Operator:
		return jwt.Permissions{
			Pub:  jwt.Permission{Allow: jwt.StringList{">"}},
			Sub:  jwt.Permission{Allow: jwt.StringList{">"}},
			Resp: &jwt.ResponsePermission{MaxMsgs: 1},
		}
	}
	p := &perms{apis: g.apis()}
	p.sub = append(p.sub, InboxPrefix(pub)+".>")
	switch g.Role {
	case Agent:
		g.agent(p)
	case Trigger:
		g.viewer(p)
		p.pub = append(p.pub, subjects.AllTriggers)
	case Viewer:
		g.viewer(p)
	}
	perm := jwt.Permissions{
		Pub: jwt.Permission{Allow: jwt.StringList(slices.Compact(slices.Sorted(slices.Values(p.pub)))), Deny: jwt.StringList(p.deny)},
		Sub: jwt.Permission{Allow: jwt.StringList(slices.Compact(slices.Sorted(slices.Values(p.sub))))},
	}
	if g.Role == Agent {
		perm.Resp = &jwt.ResponsePermission{MaxMsgs: 1} // drain replies
	}
	return perm
}

// agent allows what an agent does (see Agent).
func (g Grant) agent(p *perms) {
	p.api("INFO")
	for _, q := range subjects.ServedQueues(g.Queues, g.Labels) {
		for _, tier := range subjects.Tiers {
			c := subjects.JobConsumer(q, tier)
			p.api("CONSUMER", "INFO", subjects.JobsStream, c)
			p.api("CONSUMER", "MSG", "NEXT", subjects.JobsStream, c)
			p.pub = append(p.pub, "$JS.ACK."+subjects.JobsStream+"."+c+".>")
		}
		p.pub = append(p.pub, subjects.QueueOpen(q), subjects.Scanned(q), subjects.Wake(q))
		p.sub = append(p.sub, subjects.Scanned(q), subjects.Wake(q))
	}
	p.pub = append(p.pub, subjects.AllStageEvents, subjects.AllHeartbeats, subjects.AllLogs)
	p.sub = append(p.sub, subjects.AllCancel, subjects.RunEvents, subjects.AllDrains)
	// Registry.
	p.api("STREAM", "INFO", kvStream(subjects.AgentsBucket))
	p.pub = append(p.pub, subjects.KVSubject(subjects.AgentsBucket, "*"))
	// Judging jobs and sweeping workspaces: stage documents and events,
	// never run documents.
	for _, s := range []string{kvStream(subjects.StagesBucket), subjects.EventsStream} {
		p.api("STREAM", "INFO", s)
		p.api("STREAM", "MSG", "GET", s)
		p.api("DIRECT", "GET", s)
		p.api("DIRECT", "GET", s, ">")
	}
	// Queue pauses, watched.
	p.reads(kvStream(subjects.WIPBucket))
	// Artifacts and caches, read and written.
	for _, b := range []string{subjects.ArtifactsBucket, subjects.CacheBucket} {
		p.reads(objStream(b))
		p.api("STREAM", "PURGE", objStream(b))
		p.pub = append(p.pub, "$O."+b+".>")
	}
	p.reads(kvStream(subjects.CacheIndexBucket))
	p.pub = append(p.pub, subjects.KVSubject(subjects.CacheIndexBucket, ">"))
}

// viewer allows what a viewer reads (see Viewer): every stream's and
// bucket's messages but the jobs' and triggers', through the API calls
// reads allows, on any stream but those two.
func (g Grant) viewer(p *perms) {
	p.inspects()
	p.api("STREAM", "MSG", "GET", "*")
	p.api("DIRECT", "GET", "*")
	p.api("DIRECT", "GET", "*", ">")
	p.api("CONSUMER", "CREATE", "*")
	p.api("CONSUMER", "CREATE", "*", ">")
	p.api("CONSUMER", "DELETE", "*", ">")
	p.api("CONSUMER", "MSG", "NEXT", "*", ">")
	p.pub = append(p.pub, "$JS.FC.>")
	p.sub = append(p.sub, subjects.AllEvents)
	// Jobs and dead letters (copies of jobs) carry tokens and secrets; the
	// repository settings hold them, and the API tokens' bucket their
	// hashes.
	for _, s := range []string{subjects.JobsStream, subjects.TriggersStream, subjects.DLQStream, kvStream(subjects.ReposBucket), kvStream(subjects.TokensBucket)} {
		for _, a := range p.apis {
			p.deny = append(p.deny, a+".STREAM.MSG.GET."+s, a+".DIRECT.GET."+s, a+".DIRECT.GET."+s+".>",
				a+".CONSUMER.CREATE."+s, a+".CONSUMER.CREATE."+s+".>", a+".CONSUMER.DURABLE.CREATE."+s+".>",
				a+".CONSUMER.MSG.NEXT."+s+".>")
		}
	}
}
