// Package test holds weft's end-to-end tests and the helpers other packages'
// tests share: a real embedded nats-server with JetStream on a temporary
// store, and the weft binary built once per test process.
//
// Nothing here is faked: helpers start real servers and processes and stop
// them with t.Cleanup.
package test
