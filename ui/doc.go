// Package ui is weft's web UI: static files embedded in the binary
// (go:embed), with no build step and no bundle; the pages are plain
// JavaScript modules that read and change everything through the HTTP
// API (package api), with the same tokens.
//
// It must not import any other weft package.
//
// Decisions taken where the design was silent:
//
//   - One page (index.html) answers every UI path (/, /runs/ID, /queues,
//     /agents, /login); the script routes on the path, so links can be
//     shared and reloaded.
//   - The token is kept in the API's HttpOnly cookie (POST /api/session):
//     no script can read it, and the log stream (EventSource, which sends
//     no headers) authenticates with it.
//   - Live without reloading: run states and queues are polled every
//     second while the page shows them; logs follow over Server-Sent
//     Events, and an EventSource resumes with Last-Event-ID by itself.
package ui
