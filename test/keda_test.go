package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// jszLag reads /jsz as KEDA's nats-jetstream scaler does
// (?acc=ACCOUNT&consumers=true) and returns each consumer of stream's lag,
// num_pending + num_ack_pending, by name.
func jszLag(t *testing.T, monitor, account, stream string) map[string]int {
	t.Helper()
	resp, err := http.Get(monitor + "/jsz?acc=" + account + "&consumers=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var jsz struct {
		AccountDetails []struct {
			Name         string `json:"name"`
			StreamDetail []struct {
				Name           string `json:"name"`
				ConsumerDetail []struct {
					Name          string `json:"name"`
					NumPending    int    `json:"num_pending"`
					NumAckPending int    `json:"num_ack_pending"`
				} `json:"consumer_detail"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&jsz); err != nil {
		t.Fatalf("/jsz: %v", err)
	}
	lag := map[string]int{}
	for _, a := range jsz.AccountDetails {
		for _, s := range a.StreamDetail {
			if a.Name != account || s.Name != stream {
				continue
			}
			for _, c := range s.ConsumerDetail {
				lag[c.Name] = c.NumPending + c.NumAckPending
			}
		}
	}
	return lag
}

// The lag KEDA's scaler reads from /jsz for each tier consumer of a queue
// is that tier's depth: the jobs waiting on the queue, by tier.
func TestJszGivesEachQueueTiersDepth(t *testing.T) {
	t.Parallel()
	f := startAuthFleet(t, "--http-monitor", "127.0.0.1:0")
	line := f.srv.waitLine(t, &f.srv.stderr, 10*time.Second, "the monitoring URL", func(l string) bool { return strings.Contains(l, "nats monitoring on ") })
	monitor := strings.Fields(strings.SplitN(line, "monitoring on ", 2)[1])[0]
	// With auth on, the account is the weft account's key, as the server
	// and weft creds --account print it.
	line = f.srv.waitLine(t, &f.srv.stderr, 10*time.Second, "the account", func(l string) bool { return strings.Contains(l, "; account ") })
	account := strings.Fields(strings.SplitN(line, "; account ", 2)[1])[0]
	if res := RunWeft(t, weftBin, "", nil, "creds", "--account", "--state", f.state); strings.TrimSpace(res.Stdout) != account {
		t.Errorf("weft creds --account printed %q, the server %q", res.Stdout, account)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The consumers an agent of queue main creates; no agent takes a job.
	if err := bus.EnsureJobConsumers(ctx, f.s.Bus.JS, "main", 0, 0); err != nil {
		t.Fatal(err)
	}
	startWeft(t, nil, "dispatcher", "--server", f.url, "--creds", f.mint(t, "dispatcher"), "--wip", "100")
	want := map[subjects.Tier]int{subjects.High: 2, subjects.Normal: 3, subjects.Low: 1}
	n := 0
	for tier, k := range want {
		for range k {
			n++
			f.s.Submit(t, "name: deep\nstages:\n  - key: s\n    queue: main\n    commands: [true]\n", func(tr *wire.Trigger) {
				tr.Priority, tr.Repo = tier, fmt.Sprintf("acme/r%d", n)
			})
		}
	}
	var lag map[string]int
	if !Eventually(30*time.Second, func() bool {
		lag = jszLag(t, monitor, account, subjects.JobsStream)
		for _, tier := range subjects.Tiers {
			if lag[subjects.JobConsumer("main", tier)] != want[tier] {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("/jsz lag per consumer %v, want %v by tier", lag, want)
	}
	for _, tier := range subjects.Tiers {
		c, err := bus.JobConsumer(ctx, f.s.Bus.JS, "main", tier)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := int(info.NumPending) + info.NumAckPending; got != lag[c.CachedInfo().Name] {
			t.Errorf("consumer %s: JetStream says %d pending, /jsz %d", c.CachedInfo().Name, got, lag[c.CachedInfo().Name])
		}
	}
}

// The KEDA example parses as Kubernetes objects of the right kinds: an
// agent Deployment per queue, scaled by a ScaledObject whose triggers read
// that queue's four tier consumers through the monitoring Service.
func TestTheKEDAManifestsAreValid(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../deploy/keda/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/keda: %v", err)
	}
	type object struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   struct {
			Name      string `yaml:"name"`
			Namespace string `yaml:"namespace"`
		} `yaml:"metadata"`
		Spec yaml.Node `yaml:"spec"`
	}
	kinds := map[string]string{"Deployment": "apps/v1", "Service": "v1", "ScaledObject": "keda.sh/v1alpha1"}
	deployments, services := map[string][]string{}, map[string]bool{}
	var scaled []object
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var o object
			if err := dec.Decode(&o); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if kinds[o.Kind] == "" || kinds[o.Kind] != o.APIVersion || o.Metadata.Name == "" {
				t.Errorf("%s: %s %s of %s: not a kind the example should have", file, o.Kind, o.Metadata.Name, o.APIVersion)
			}
			switch o.Kind {
			case "Deployment":
				var spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Args []string `yaml:"args"`
							} `yaml:"containers"`
						} `yaml:"spec"`
					} `yaml:"template"`
				}
				if err := o.Spec.Decode(&spec); err != nil || len(spec.Template.Spec.Containers) != 1 {
					t.Fatalf("%s: deployment %s: %v", file, o.Metadata.Name, err)
				}
				args := spec.Template.Spec.Containers[0].Args
				if i := slices.Index(args, "--queue"); i < 0 || i+1 == len(args) || !slices.Contains(args, "--exit-when-idle") {
					t.Errorf("%s: deployment %s runs %v, want weft agent --queue Q --exit-when-idle", file, o.Metadata.Name, args)
				} else {
					deployments[o.Metadata.Name] = append(deployments[o.Metadata.Name], args[i+1])
				}
			case "Service":
				services[o.Metadata.Name] = true
			case "ScaledObject":
				scaled = append(scaled, o)
			}
		}
	}
	if len(scaled) == 0 {
		t.Fatal("no ScaledObject")
	}
	for _, o := range scaled {
		var spec struct {
			ScaleTargetRef struct {
				Name string `yaml:"name"`
			} `yaml:"scaleTargetRef"`
			Triggers []struct {
				Type     string            `yaml:"type"`
				Metadata map[string]string `yaml:"metadata"`
			} `yaml:"triggers"`
		}
		if err := o.Spec.Decode(&spec); err != nil {
			t.Fatal(err)
		}
		queues := deployments[spec.ScaleTargetRef.Name]
		if len(queues) != 1 {
			t.Errorf("ScaledObject %s scales %q, not an agent Deployment of one queue", o.Metadata.Name, spec.ScaleTargetRef.Name)
			continue
		}
		var consumers []string
		for _, tr := range spec.Triggers {
			m := tr.Metadata
			host, _, _ := strings.Cut(m["natsServerMonitoringEndpoint"], ".")
			if tr.Type != "nats-jetstream" || m["account"] != "WEFT_ACCOUNT" || m["stream"] != subjects.JobsStream || !services[host] {
				t.Errorf("ScaledObject %s: trigger %+v", o.Metadata.Name, tr)
			}
			consumers = append(consumers, m["consumer"])
		}
		var want []string
		for _, tier := range subjects.Tiers {
			want = append(want, subjects.JobConsumer(queues[0], tier))
		}
		slices.Sort(consumers)
		slices.Sort(want)
		if !slices.Equal(consumers, want) {
			t.Errorf("ScaledObject %s reads consumers %v, want queue %s's %v", o.Metadata.Name, consumers, queues[0], want)
		}
	}
}
