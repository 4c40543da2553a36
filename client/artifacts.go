package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// ArtifactInfo is one artifact of a run, as its record lists it.
type ArtifactInfo struct {
	Stage string `json:"stage"`
	wire.Artifact
	// Stored is when the stage that stored it finished; Expires when the
	// bucket's retention removes it.
	Stored  time.Time `json:"stored"`
	Expires time.Time `json:"expires"`
}

// Artifacts returns the artifacts of a run's stages, in pipeline order
// then path order, as the stages' finished events list them.
func Artifacts(ctx context.Context, js jetstream.JetStream, runID string) ([]ArtifactInfo, error) {
	rs, err := runstore.Open(ctx, js)
	if err != nil {
		return nil, err
	}
	l, err := rs.Load(ctx, runID)
	if err != nil {
		return nil, err
	}
	events, err := js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subjects.EventsStream, err)
	}
	var keep time.Duration
	if obs, err := bus.ObjectStore(ctx, js, subjects.ArtifactsBucket); err == nil {
		if st, err := obs.Status(ctx); err == nil {
			keep = st.TTL()
		}
	}
	var out []ArtifactInfo
	for _, s := range l.Run.Stages {
		if s.ArtifactsSeq == 0 {
			continue
		}
		m, err := events.GetMsg(ctx, s.ArtifactsSeq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // past retention with its run's events
		}
		if err != nil {
			return nil, fmt.Errorf("artifacts of stage %s: %w", s.Key, err)
		}
		var ev wire.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			return nil, fmt.Errorf("artifacts of stage %s: %w", s.Key, err)
		}
		for _, a := range ev.Artifacts {
			info := ArtifactInfo{Stage: s.Key, Artifact: a, Stored: m.Time}
			if keep > 0 {
				info.Expires = m.Time.Add(keep)
			}
			out = append(out, info)
		}
	}
	return out, nil
}
