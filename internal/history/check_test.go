package history

import (
	"strings"
	"testing"
)

// in is ev with a mode (and the permits of a semaphore).
func in(m Mode, permits int, e Event) Event {
	e.Mode, e.Permits = m, permits
	return e
}

func sh(key string, start, end int) Event { return in(Shared, 0, ev(key, start, end, 0)) }

func sem(key string, n, start, end int) Event { return in(Semaphore, n, ev(key, start, end, 0)) }

// kinds returns the kinds of vs, in order.
func kinds(vs []Violation) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.Kind
	}
	return out
}

func TestCheckSharedClean(t *testing.T) {
	events := []Event{
		ev("a", 0, 10, 1),
		sh("a", 10, 30), // three readers together, after the writer
		sh("a", 12, 20),
		sh("a", 15, 40),
		ev("a", 40, 50, 2), // the next writer once the last reader left; tokens increase among writers
		sh("a", 50, 51),
		sh("b", 0, 100), // another key: independent
		ev("c", 0, 10, 0),
	}
	r := Analyze(events)
	if err := r.Err(); err != nil {
		t.Fatalf("clean shared history: %v", err)
	}
	if r.Checked != 8 || r.Modes[Shared] != 5 || r.Modes[Exclusive] != 3 {
		t.Errorf("Checked %d, Modes %v", r.Checked, r.Modes)
	}
	if r.Overlapped != 2 || r.Peak["a"] != 3 || r.Peak["b"] != 1 || r.Peak["c"] != 1 {
		t.Errorf("Overlapped %d, Peak %v: want 2 and a:3 b:1 c:1", r.Overlapped, r.Peak)
	}
	if s := Summary(r, nil); !strings.Contains(s, "8 critical sections on 3 keys checked, 0 violations, 3 exclusive, 5 shared, 0 semaphore") ||
		!strings.Contains(s, "at most 3 at once") {
		t.Errorf("Summary = %q", s)
	}
}

func TestCheckCatchesExclusiveWithShared(t *testing.T) {
	for name, c := range map[string]struct {
		events []Event
		a, b   int // starts of the pair reported
	}{
		"writer inside a reader":      {[]Event{sh("a", 0, 100), ev("a", 10, 20, 0)}, 0, 10},
		"reader inside a writer":      {[]Event{ev("a", 0, 100, 0), sh("a", 50, 60)}, 0, 50},
		"writer over the last reader": {[]Event{sh("a", 0, 50), sh("a", 10, 60), ev("a", 55, 70, 0)}, 10, 55},
		"reader starts with a writer": {[]Event{ev("a", 5, 6, 0), sh("a", 5, 7)}, 5, 5},
	} {
		vs := violations(t, c.events)
		if len(vs) != 1 || vs[0].Kind != KindOverlap || vs[0].A.Start != us(c.a) || vs[0].B.Start != us(c.b) {
			t.Errorf("%s: violations %v, want one overlap of the sections starting at %d and %d", name, vs, c.a, c.b)
		}
	}
}

func TestCheckSemaphore(t *testing.T) {
	clean := []Event{
		sem("s", 2, 0, 10),
		sem("s", 2, 5, 20),  // 2 at once
		sem("s", 2, 10, 30), // the first left at 10: still 2
		sem("s", 2, 30, 31),
		ev("s", 31, 40, 0), // exclusive after them all
	}
	r := Analyze(clean)
	if err := r.Err(); err != nil {
		t.Fatalf("clean semaphore history: %v", err)
	}
	if r.Peak["s"] != 2 || r.Modes[Semaphore] != 4 {
		t.Errorf("Peak %v, Modes %v", r.Peak, r.Modes)
	}

	over := []Event{sem("s", 2, 0, 100), sem("s", 2, 10, 20), sem("s", 2, 15, 30), sem("s", 2, 40, 50)}
	vs := violations(t, over)
	if len(vs) != 1 || vs[0].Kind != KindPermits || vs[0].N != 3 || vs[0].Limit != 2 || vs[0].B.Start != us(15) || vs[0].A.Start != us(0) {
		t.Fatalf("violations %v, want 3 of 2 permits when the section at 15 started", vs)
	}
	if !strings.Contains(vs[0].Error(), "3 sections in progress at once, over the key's 2 permits") {
		t.Errorf("Error() = %q", vs[0].Error())
	}

	for name, events := range map[string][]Event{
		"exclusive with a permit holder": {sem("s", 3, 0, 10), ev("s", 5, 6, 0)},
		"shared with a permit holder":    {sem("s", 3, 0, 10), sh("s", 5, 6)},
	} {
		if vs := violations(t, events); len(vs) != 1 || vs[0].Kind != KindOverlap {
			t.Errorf("%s: violations %v, want one overlap", name, vs)
		}
	}
}

func TestCheckCatchesBadMode(t *testing.T) {
	for name, c := range map[string]struct {
		events []Event
		want   []string
	}{
		"semaphore without permits": {[]Event{sem("s", 0, 0, 10)}, []string{KindMode}},
		"unknown mode":              {[]Event{in(Mode(9), 0, ev("s", 0, 10, 0))}, []string{KindMode}},
		"permits disagree":          {[]Event{sem("s", 2, 0, 10), sem("s", 3, 20, 30)}, []string{KindMode}},
		"and also too many": {[]Event{sem("s", 1, 0, 10), sem("s", 2, 5, 30)},
			[]string{KindMode, KindPermits}},
	} {
		vs := violations(t, c.events)
		if got := kinds(vs); strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("%s: violations %v, want kinds %v", name, vs, c.want)
		}
		for _, v := range vs {
			t.Logf("%s: %v", name, v)
		}
	}
}

// TestCheckTokensAmongExclusive: fencing tokens are compared between the
// exclusive sections of a key; shared sections between them carry none.
func TestCheckTokensAmongExclusive(t *testing.T) {
	if err := Check([]Event{ev("a", 0, 10, 4), sh("a", 10, 20), sh("a", 11, 21), ev("a", 30, 40, 5)}); err != nil {
		t.Errorf("tokens 4, 5 with readers between: %v", err)
	}
	vs := violations(t, []Event{ev("a", 0, 10, 5), sh("a", 10, 20), ev("a", 30, 40, 5)})
	if len(vs) != 1 || vs[0].Kind != KindToken || vs[0].A.Start != us(0) || vs[0].B.Start != us(30) {
		t.Errorf("violations %v, want the repeated token of the two writers", vs)
	}
}

func TestModeString(t *testing.T) {
	for m, want := range map[Mode]string{Exclusive: "exclusive", Shared: "shared", Semaphore: "semaphore", Mode(7): "mode(7)"} {
		if m.String() != want {
			t.Errorf("%d: %q, want %q", m, m.String(), want)
		}
	}
	if s := sem("k", 4, 0, 1).String(); !strings.Contains(s, "semaphore of 4") {
		t.Errorf("String() = %q", s)
	}
	if s := ev("k", 0, 1, 0).String(); strings.Contains(s, "exclusive") {
		t.Errorf("String() of an exclusive section names its mode: %q", s)
	}
}
