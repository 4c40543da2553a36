package subjects

import (
	"slices"
	"testing"
)

func TestAnAgentServesTheLabelQueueOfEverySubsetOfItsLabels(t *testing.T) {
	labels := map[string]string{"os": "linux", "gpu": "true"}
	served := ServedQueues([]string{"main"}, labels)
	if len(served) != 4 || served[0] != "main" {
		t.Fatalf("ServedQueues = %v, want main and its 3 label queues", served)
	}
	for _, ask := range []map[string]string{nil, {"os": "linux"}, {"gpu": "true"}, {"gpu": "true", "os": "linux"}} {
		q := LabelQueue("main", ask)
		if !slices.Contains(served, q) {
			t.Errorf("a stage asking for %v goes to %s, which the agent does not serve (%v)", ask, q, served)
		}
		if err := ValidateJobQueue(q); err != nil || BaseQueue(q) != "main" {
			t.Errorf("%s: %v, base %s", q, err, BaseQueue(q))
		}
	}
	for _, ask := range []map[string]string{{"os": "windows"}, {"arch": "arm64"}, {"gpu": "true", "os": "linux", "arch": "arm64"}} {
		if q := LabelQueue("main", ask); slices.Contains(served, q) {
			t.Errorf("a stage asking for %v goes to %s, which an agent without those labels serves", ask, q)
		}
	}
	if ValidateJobQueue("main+xyz") == nil || ValidateQueue(LabelQueue("main", labels)) == nil {
		t.Error("a malformed label queue passed, or a label queue passed as a queue a pipeline may name")
	}
	if ValidateLabel("os", "linux") != nil || ValidateLabel("OS", "x") == nil || ValidateLabel("os", "") == nil || ValidateLabel("os", "a b") == nil {
		t.Error("ValidateLabel accepts or refuses the wrong labels")
	}
}
