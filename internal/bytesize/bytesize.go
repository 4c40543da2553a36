// Package bytesize formats byte counts for the limits weft states in its
// errors.
package bytesize

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Format renders n bytes in the largest binary unit it reaches (KiB, MiB,
// GiB, TiB) with one decimal, rounded up, so that a size over a limit
// never reads as the limit: 512 KiB, 512.1 KiB, 1023 bytes.
func Format(n int64) string {
	units := []string{"KiB", "MiB", "GiB", "TiB"}
	if n < 1<<10 {
		return strconv.FormatInt(n, 10) + " bytes"
	}
	i, div := 0, float64(1<<10)
	for i < len(units)-1 && float64(n) >= div*(1<<10) {
		i, div = i+1, div*(1<<10)
	}
	s := strconv.FormatFloat(math.Ceil(float64(n)/div*10)/10, 'f', 1, 64)
	return strings.TrimSuffix(s, ".0") + " " + units[i]
}

// Parse reads a size: a number of bytes, or a number with a binary unit
// (KiB, MiB, GiB, TiB; K, M, G, T and KB, MB, GB, TB are read as the same
// binary units), as in 5GiB or 512 KiB.
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes, or one with a unit (KiB, MiB, GiB, TiB)", s)
	}
	shift := map[string]uint{"": 0, "B": 0, "K": 10, "KB": 10, "KIB": 10, "M": 20, "MB": 20, "MIB": 20, "G": 30, "GB": 30, "GIB": 30, "T": 40, "TB": 40, "TIB": 40}
	sh, ok := shift[strings.ToUpper(unit)]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q (want KiB, MiB, GiB or TiB)", s, unit)
	}
	n := v * float64(int64(1)<<sh)
	if n > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(math.Ceil(n)), nil
}
