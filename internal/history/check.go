package history

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
)

// Mode is how a critical section held its key.
type Mode uint8

// Modes. A key's sections are judged by their modes: an Exclusive section
// overlaps no other section of its key; Shared sections may overlap each
// other, and nothing else; Semaphore sections may overlap each other, at
// most Event.Permits at any instant, and nothing else.
const (
	// Exclusive is the zero Mode: events that name no mode are exclusive.
	Exclusive Mode = iota
	// Shared is a shared (reader's) lock: LOCK IN SHARE MODE, FOR SHARE.
	Shared
	// Semaphore is one of the n permits of a counting semaphore; n is the
	// event's Permits, the same for every section of the key.
	Semaphore
)

// String returns "exclusive", "shared", "semaphore", or "mode(n)".
func (m Mode) String() string {
	switch m {
	case Exclusive:
		return "exclusive"
	case Shared:
		return "shared"
	case Semaphore:
		return "semaphore"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// excludes reports whether sections of modes a and b of one key may not
// be in progress at the same instant (regardless of a semaphore's limit).
func excludes(a, b Mode) bool { return a == Exclusive || b == Exclusive || a != b }

// Kinds of Violation.
const (
	KindOverlap  = "overlap"  // two sections whose modes exclude each other overlapped
	KindPermits  = "permits"  // more Semaphore sections of a key in progress than its Permits
	KindToken    = "token"    // a fencing token did not increase
	KindInterval = "interval" // a section ends before it starts
	KindMode     = "mode"     // an unknown mode, a Semaphore without Permits, or a key's sections disagreeing on Permits
)

// A Violation is what Analyze found wrong: a pair of critical sections of
// one key that break mutual exclusion (KindOverlap), a section that
// exceeded its key's permits (KindPermits: A is a section in progress when
// B started, N how many were, B included, Limit the key's Permits), a token that did not increase
// (KindToken), a malformed interval (KindInterval, B is zero) or mode
// (KindMode; B, when set, is the first section of the key that A
// disagrees with).
type Violation struct {
	Kind     string
	A, B     Event
	N, Limit int
}

func (v Violation) Error() string {
	switch v.Kind {
	case KindInterval:
		return fmt.Sprintf("history: interval ends before it starts: %s", v.A)
	case KindToken:
		return fmt.Sprintf("history: token did not increase: %s then %s", v.A, v.B)
	case KindPermits:
		return fmt.Sprintf("history: %d sections in progress at once, over the key's %d permits: %s started during %s", v.N, v.Limit, v.B, v.A)
	case KindMode:
		if v.B.Key == "" {
			return fmt.Sprintf("history: bad mode: %s (a Semaphore section needs Permits >= 1)", v.A)
		}
		return fmt.Sprintf("history: the sections of a key disagree on its permits: %s and %s", v.B, v.A)
	default:
		return fmt.Sprintf("history: critical sections overlap: %s and %s", v.A, v.B)
	}
}

// A Report is the result of Analyze.
type Report struct {
	Checked    int          // committed critical sections checked
	Keys       int          // distinct keys among them
	Modes      map[Mode]int // the checked sections by mode
	Overlapped int          // sections that started while another of their key was in progress
	// Peak is, per key, the most sections in progress at one instant: 1
	// for exclusive keys; above 1 when Shared or Semaphore sections
	// actually ran together.
	Peak       map[string]int
	Violations []Violation
}

// Err returns nil when there is no violation, else an error listing them
// (the first 10).
func (r Report) Err() error {
	if len(r.Violations) == 0 {
		return nil
	}
	errs := []error{fmt.Errorf("history: %d violation(s) in %d critical sections", len(r.Violations), r.Checked)}
	for i, v := range r.Violations {
		if i == 10 {
			errs = append(errs, fmt.Errorf("... and %d more", len(r.Violations)-10))
			break
		}
		errs = append(errs, v)
	}
	return errors.Join(errs...)
}

// Check returns an error if two committed critical sections of the same key
// overlapped although their modes exclude each other, if more Semaphore
// sections of a key than its Permits were in progress at one instant, or
// if the fencing tokens of a key's exclusive sections did not increase
// strictly in interval order. Only events with Outcome Committed are
// considered. Intervals that merely touch (one ends the microsecond the
// next starts) do not overlap.
func Check(events []Event) error { return Analyze(events).Err() }

// Analyze is Check with the details.
func Analyze(events []Event) Report {
	byKey := committedByKey(events)
	r := Report{Keys: len(byKey), Modes: make(map[Mode]int), Peak: make(map[string]int, len(byKey))}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		r.checkKey(byKey[k])
	}
	return r
}

// checkKey checks the committed sections of one key. It sweeps them in
// interval order (by start, then end), keeping the sections still in
// progress at each start: two sections overlap exactly when one starts
// while the other is in progress, and the most sections in progress at
// once are so at some section's start.
func (r *Report) checkKey(evs []Event) {
	slices.SortStableFunc(evs, func(a, b Event) int {
		return cmp.Or(a.Start.Compare(b.Start), a.End.Compare(b.End))
	})
	r.Checked += len(evs)
	var active []Event // in progress at the current start
	var permits *Event // the first Semaphore section: the key's limit
	var lastExclusive *Event
	for i := range evs {
		e := evs[i]
		r.Modes[e.Mode]++
		if e.End.Before(e.Start) {
			r.Violations = append(r.Violations, Violation{Kind: KindInterval, A: e})
		}
		r.checkMode(e, &permits)
		active = slices.DeleteFunc(active, func(a Event) bool { return !a.End.After(e.Start) })
		if len(active) > 0 {
			r.Overlapped++
		}
		// Report each section once, against the one in progress that ends
		// last (a long section that contains several is named for each).
		if a, ok := lastEnding(active, func(a Event) bool { return excludes(a.Mode, e.Mode) }); ok {
			r.Violations = append(r.Violations, Violation{Kind: KindOverlap, A: a, B: e})
		} else if e.Mode == Semaphore && permits != nil {
			sem := func(a Event) bool { return a.Mode == Semaphore }
			if n := countFunc(active, sem) + 1; n > permits.Permits {
				a, _ := lastEnding(active, sem)
				r.Violations = append(r.Violations, Violation{Kind: KindPermits, A: a, B: e, N: n, Limit: permits.Permits})
			}
		}
		if e.Mode == Exclusive {
			if p := lastExclusive; p != nil && (e.Token != 0 || p.Token != 0) && e.Token <= p.Token {
				r.Violations = append(r.Violations, Violation{Kind: KindToken, A: *p, B: e})
			}
			lastExclusive = &evs[i]
		}
		active = append(active, e)
		r.Peak[e.Key] = max(r.Peak[e.Key], len(active))
	}
}

// checkMode reports a section whose mode is malformed, or whose Permits
// differ from those of the key's first Semaphore section (*first, set
// here when e is that section).
func (r *Report) checkMode(e Event, first **Event) {
	switch {
	case e.Mode > Semaphore, e.Mode == Semaphore && e.Permits < 1:
		r.Violations = append(r.Violations, Violation{Kind: KindMode, A: e})
	case e.Mode != Semaphore:
	case *first == nil:
		*first = &e
	case (*first).Permits != e.Permits:
		r.Violations = append(r.Violations, Violation{Kind: KindMode, A: e, B: **first})
	}
}

// lastEnding returns the section of evs that ends last among those that
// match.
func lastEnding(evs []Event, match func(Event) bool) (Event, bool) {
	var out Event
	found := false
	for _, a := range evs {
		if match(a) && (!found || a.End.After(out.End)) {
			out, found = a, true
		}
	}
	return out, found
}

func countFunc(evs []Event, match func(Event) bool) int {
	n := 0
	for _, a := range evs {
		if match(a) {
			n++
		}
	}
	return n
}
