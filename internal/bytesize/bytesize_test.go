package bytesize

import "testing"

func TestFormat(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0 bytes"},
		{1023, "1023 bytes"},
		{1024, "1 KiB"},
		{512 << 10, "512 KiB"},
		{512<<10 + 1, "512.1 KiB"},
		{1536, "1.5 KiB"},
		{1 << 20, "1 MiB"},
		{2_726_297, "2.6 MiB"},
		{5 << 30, "5 GiB"},
		{5<<30 + 1, "5.1 GiB"},
		{3 << 40, "3 TiB"},
	}
	for _, tt := range tests {
		if got := Format(tt.n); got != tt.want {
			t.Errorf("Format(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "1KiB": 1 << 10, "5 GiB": 5 << 30, "1.5M": 3 << 19, "2gb": 2 << 30, "1TiB": 1 << 40} {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "5 parsecs", "1e400"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) succeeded", in)
		}
	}
}
