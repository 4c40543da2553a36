package procs

import (
	"os"
	"runtime"
	"runtime/debug"
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

func TestPeakAndItsReset(t *testing.T) {
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	held, err := Peak(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if held < 64<<20 {
		t.Fatalf("Peak = %d bytes, want at least the 64 MiB this test touched", held)
	}
	_ = buf[len(buf)-1]
	buf = nil
	runtime.GC()
	debug.FreeOSMemory()
	if err := ResetPeak(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	after, err := Peak(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after > held-32<<20 {
		t.Errorf("Peak after ResetPeak = %d bytes, want well under the %d held before", after, held)
	}
	if _, err := Peak(1 << 30); err == nil {
		t.Error("Peak(no such pid) = nil error")
	}
}
