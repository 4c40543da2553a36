package subjects

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
)

// MaxLabels bounds the labels of an agent and those a stage asks for: an
// agent serves a queue of every subset of its labels (LabelQueue), 2^n of
// them.
const MaxLabels = 4

var (
	labelNameRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,31}$`)
	labelValueRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,63}$`)
)

// ValidateLabel checks an agent label: a name of 1 to 32 characters of
// [a-z0-9_.-] starting with a letter or digit, and a value of 1 to 63
// characters of [A-Za-z0-9_.-]. The error wraps ErrInvalidName.
func ValidateLabel(name, value string) error {
	if !labelNameRE.MatchString(name) {
		return fmt.Errorf("%w: label name %q must be 1-32 characters of a-z, 0-9, '_', '.' and '-', starting with a letter or digit", ErrInvalidName, name)
	}
	if !labelValueRE.MatchString(value) {
		return fmt.Errorf("%w: label %s value %q must be 1-63 characters of A-Z, a-z, 0-9, '_', '.' and '-'", ErrInvalidName, name, value)
	}
	return nil
}

// LabelQueue returns the queue the jobs of a stage of queue that asks for
// agents with labels go to: queue itself without labels, else queue+HASH,
// HASH 10 hex digits of the SHA-256 of the sorted labels. An agent with
// labels L serves the label queue of every subset of L (ServedQueues).
func LabelQueue(queue string, labels map[string]string) string {
	if len(labels) == 0 {
		return queue
	}
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		fmt.Fprintf(h, "%s=%s\n", k, labels[k])
	}
	return queue + "+" + hex.EncodeToString(h.Sum(nil))[:10]
}

// BaseQueue returns the queue a label queue (LabelQueue) belongs to.
func BaseQueue(queue string) string {
	base, _, _ := strings.Cut(queue, "+")
	return base
}

var labelQueueRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}(\+[0-9a-f]{10})?$`)

// ValidateJobQueue checks a queue jobs go to: a queue (ValidateQueue) or
// one of its label queues (LabelQueue).
func ValidateJobQueue(name string) error {
	if labelQueueRE.MatchString(name) {
		return nil
	}
	if err := ValidateQueue(BaseQueue(name)); err != nil {
		return err
	}
	return fmt.Errorf("%w: queue %q: a label queue is QUEUE+ and 10 hex digits", ErrInvalidName, name)
}

// ServedQueues returns the job queues an agent serving queues with
// labels takes jobs from: for each queue, its label queue for every
// subset of labels, the queue itself first.
func ServedQueues(queues []string, labels map[string]string) []string {
	keys := slices.Sorted(maps.Keys(labels))
	var out []string
	for _, q := range queues {
		for mask := range 1 << len(keys) {
			sub := map[string]string{}
			for i, k := range keys {
				if mask&(1<<i) != 0 {
					sub[k] = labels[k]
				}
			}
			out = append(out, LabelQueue(q, sub))
		}
	}
	return out
}
