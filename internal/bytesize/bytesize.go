// Package bytesize formats byte counts for the limits weft states in its
// errors.
package bytesize

import (
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
