package procs

import (
	"os"
	"testing"
)

func TestOfThisProcess(t *testing.T) {
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	u, err := Of(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.RSS < 64<<20 {
		t.Errorf("RSS = %d bytes, want at least the 64 MiB this test touched", u.RSS)
	}
	if u.CPU <= 0 {
		t.Errorf("CPU = %v, want some", u.CPU)
	}
	if _, err := Of(1 << 30); err == nil {
		t.Error("Of(no such pid) = nil error")
	}
	_ = buf[len(buf)-1]
}
