package agent

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// A large transfer notes how far it got while it runs; a small one
// notes nothing.
func TestProgressReaderNotesLargeTransfers(t *testing.T) {
	var notes []string
	note := func(s string) { notes = append(notes, s) }
	data := make([]byte, 10<<20)
	r := newProgressReader(bytes.NewReader(data), "storing big.bin", int64(len(data)), note)
	r.(*progressReader).interval = 0
	buf := make([]byte, 1<<20) // reads of 1 MiB
	for {
		_, err := r.Read(buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(notes) != 9 || !strings.HasPrefix(notes[0], "weft: storing big.bin: 1 MiB of 10 MiB, ") || !strings.HasPrefix(notes[8], "weft: storing big.bin: 9 MiB of 10 MiB") {
		t.Fatalf("notes = %q, want one per MiB read before the end", notes)
	}
	notes = nil
	small := newProgressReader(bytes.NewReader(data[:1<<20]), "storing small", 1<<20, note)
	if _, err := io.Copy(io.Discard, small); err != nil || len(notes) != 0 {
		t.Fatalf("a 1 MiB transfer noted %q (%v)", notes, err)
	}
}
