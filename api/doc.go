// Package api is weft's HTTP API: JSON over net/http, documented by the
// OpenAPI file it serves at /api/openapi.json. Its handlers read and
// write through the packages the CLI uses (client, repos, objectstore,
// tokens); there is no second path to the bus. weft up mounts it with the
// UI, /metrics, the webhook handler and artifact downloads; weft api
// serves it for a fleet.
//
// It must not import dispatcher, agent or webhook.
//
// Decisions taken where the design was silent:
//
//   - A pipeline is a registered repository (package repos): its id in
//     paths is owner/name, with the slash escaped (%2F). A trigger reads
//     the pipeline file at the commit (the branch's head when none is
//     given) and checks it before publishing, so a bad file gets its
//     FILE:LINE:COL problems in a 400 and nothing reaches the bus.
//   - A trigger's id is the Idempotency-Key header when given, else the
//     hash of what it builds (client.TriggerID): the same request twice
//     answers 200 with the first run.
//   - Tokens come as Authorization: Bearer, or from the UI's cookie; a
//     change made with the cookie must carry the X-Weft-UI header, which
//     a cross-site form cannot send.
//   - A log stream's event ids are the lines' ordinals in the stream's
//     order, which is the order they were stored: Last-Event-ID N resumes
//     after the N-th line.
package api
