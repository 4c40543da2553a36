// Package bus connects weft to NATS: to a server by URL, or to an embedded
// nats-server with JetStream started in this process. It provisions every
// stream, KV bucket and object bucket that package subjects describes,
// idempotently, and the durable job consumers of the queues an agent serves.
//
// It knows nothing about pipelines, runs or agents.
//
// Decisions taken where the design was silent:
//
//   - The embedded server listens on no port unless Config.Listen is set;
//     in-process clients connect with nats.InProcessServer, so a laptop run
//     opens no socket.
//   - Provisioning uses CreateOrUpdate for every stream and bucket: run twice
//     with the same configuration it changes nothing, and a new weft version
//     that changes a configuration updates it in place.
//   - Failing to reach NATS (or to start the embedded server) returns an
//     error wrapping ErrUnavailable, so the CLI can exit with the
//     infrastructure code.
//   - The embedded server may be a cluster member (Config.Cluster), a
//     hub taking leaf nodes (Config.LeafListen) or a leaf node
//     (Config.Leaf), with a JetStream domain (Config.Domain) and its
//     monitoring port (Config.Monitor). ProvisionReplicated gives every
//     stream and bucket the cluster's replicas; Provision keeps what an
//     existing one has, so a dispatcher never lowers them.
//   - A JetStream cluster drops the API requests it gets while it elects
//     a leader, and a client would wait for its whole context: Establish
//     makes a watcher or consumer with 5 s attempts until it answers.
package bus
