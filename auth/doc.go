// Package auth is who may do what on a weft server's NATS.
//
// A server with auth on runs NATS in operator mode: an Authority (a
// directory of three nkey seeds: an operator, its system account, and the
// WEFT account weft's streams live in) makes the server trust the
// operator and know both accounts, and signs user credentials (.creds
// files: a user JWT and its seed). A user's permissions are in its JWT,
// signed by the account, so minting credentials needs the keys but not
// the server, and the server needs no change for a new user.
//
// Roles (Role) are least privilege for each kind of client. An agent's
// credentials name its queues and labels: it may pull and acknowledge
// only the job consumers of the queues it serves, and may not create
// consumers on the jobs stream (it asks a dispatcher to, on
// subjects.QueueOpen), read run documents, read or publish triggers, or
// read other users' replies (every restricted user has an inbox prefix
// of its own, InboxPrefix). What a denied client sees is NATS's own
// permissions violation naming the subject.
//
// The grant is also in the JWT's tags, so a client configures itself
// from its credentials (ReadCreds): weft agent --creds FILE needs no
// --queue.
package auth
