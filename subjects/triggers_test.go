package subjects

import (
	"testing"
	"time"
)

func TestTriggerRetryDelay(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}
	for i, w := range want {
		if got := TriggerRetryDelay(uint64(i + 1)); got != w {
			t.Errorf("TriggerRetryDelay(%d) = %v, want %v", i+1, got, w)
		}
	}
	if got := TriggerRetryDelay(100); got != 16*time.Second {
		t.Errorf("TriggerRetryDelay(100) = %v, want the bound 16s", got)
	}
}

func TestTriggerDLQ(t *testing.T) {
	if got, want := TriggerDLQ(Trigger("acme/api")), "weft.dlq.triggers.acme_2fapi"; got != want {
		t.Errorf("TriggerDLQ(Trigger(acme/api)) = %q, want %q", got, want)
	}
	// A queue may be called "triggers": its dead jobs keep one token.
	if DLQ("triggers") == TriggerDLQ(Trigger("")) || DLQ("triggers") != "weft.dlq.triggers" {
		t.Errorf("DLQ(triggers) = %q and TriggerDLQ = %q must differ", DLQ("triggers"), TriggerDLQ(Trigger("")))
	}
	if got := TriggerDLQMsgID(42); got != "dlq.trigger.42" {
		t.Errorf("TriggerDLQMsgID(42) = %q", got)
	}
}
