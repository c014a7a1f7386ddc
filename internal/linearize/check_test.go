package linearize

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// t0 is the time origin of the hand-made histories.
var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

// op is an increment of key k by client c, called at ms call and returned
// at ms ret (milliseconds after t0), that read v.
func op(k string, c int, call, ret float64, v int64, o Outcome) Op {
	ms := func(x float64) time.Time { return t0.Add(time.Duration(x * float64(time.Millisecond))) }
	return Op{Key: k, Client: c, Path: "Do", Node: "n1", Call: ms(call), Return: ms(ret), Read: v, HasRead: true, Outcome: o}
}

// final is a map of final values for one key.
func final(k string, v int64) map[string]int64 { return map[string]int64{k: v} }

func check(t *testing.T, h History) Result {
	t.Helper()
	r, err := Check(h, Options{Timeout: time.Minute})
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	t.Logf("%s", r.Explain())
	return r
}

// kinds returns the anomaly kinds of r, in order.
func kinds(r Result) []AnomalyKind {
	var out []AnomalyKind
	for _, a := range r.Anomalies {
		out = append(out, a.Kind)
	}
	return out
}

func hasKind(r Result, k AnomalyKind) bool {
	for _, a := range r.Anomalies {
		if a.Kind == k {
			return true
		}
	}
	return false
}

// TestCheckPasses: histories that are linearizable.
func TestCheckPasses(t *testing.T) {
	const C, N, U = Committed, NotCommitted, Unknown
	cases := []struct {
		name    string
		h       History
		applied int // UnknownApplied expected over all keys
	}{
		{"sequential chain", History{Ops: []Op{
			op("k", 0, 0, 1, 0, C), op("k", 1, 2, 3, 1, C), op("k", 0, 4, 5, 2, C),
		}, Final: final("k", 3)}, 0},
		{"concurrent, reads in the other order than calls", History{Ops: []Op{
			op("k", 0, 0, 10, 1, C), op("k", 1, 1, 5, 0, C), op("k", 2, 2, 12, 2, C),
		}, Final: final("k", 3)}, 0},
		{"closed intervals: a call at the instant of a return is concurrent", History{Ops: []Op{
			op("k", 0, 0, 5, 1, C), op("k", 1, 5, 6, 0, C),
		}, Final: final("k", 2)}, 0},
		{"not-committed operations have no effect, even reading the same value", History{Ops: []Op{
			op("k", 0, 0, 1, 0, C), op("k", 1, 0, 2, 0, N), op("k", 2, 3, 4, 1, N), op("k", 1, 5, 6, 1, C),
		}, Final: final("k", 2)}, 0},
		{"unknown outcome that took effect", History{Ops: []Op{
			op("k", 0, 0, 1, 0, C), op("k", 1, 2, 3, 1, U), op("k", 2, 4, 5, 2, C),
		}, Final: final("k", 3)}, 1},
		{"unknown outcome that took effect after it returned", History{Ops: []Op{
			// The client saw the connection drop at 3; the commit landed
			// later, before the increment that read 2 began.
			op("k", 0, 0, 1, 0, C), op("k", 1, 2, 3, 1, U), op("k", 0, 8, 9, 2, C),
		}, Final: final("k", 3)}, 1},
		{"unknown outcome that did not take effect", History{Ops: []Op{
			op("k", 0, 0, 1, 0, C), op("k", 1, 2, 3, 1, U), op("k", 2, 4, 5, 1, C),
		}, Final: final("k", 2)}, 0},
		{"unknown outcome, no final value: either way", History{Ops: []Op{
			op("k", 0, 0, 1, 0, C), op("k", 1, 2, 3, 1, U),
		}}, 0},
		{"unknown outcome without a read never wrote", History{Ops: []Op{
			op("k", 0, 0, 1, 0, C), {Key: "k", Client: 1, Call: t0, Return: t0.Add(time.Millisecond), Outcome: U},
		}, Final: final("k", 1)}, 0},
		{"initial value and several keys", History{Ops: []Op{
			op("a", 0, 0, 1, 100, C), op("b", 1, 0, 1, 0, C), op("a", 1, 2, 3, 101, C), op("b", 0, 2, 3, 1, C),
		}, Initial: map[string]int64{"a": 100}, Final: map[string]int64{"a": 102, "b": 2, "c": 0}}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := check(t, c.h)
			if r.Verdict != Linearizable || r.Err() != nil {
				t.Fatalf("verdict %s, anomalies %v, want linearizable", r.Verdict, kinds(r))
			}
			if r.Porcupine != porcupine.Ok {
				t.Errorf("porcupine says %s", r.Porcupine)
			}
			if got := r.Totals().UnknownApplied; got != c.applied {
				t.Errorf("%d operations of unknown outcome shown applied, want %d", got, c.applied)
			}
		})
	}
}

// TestCheckFails: histories that are not linearizable, each with the
// evidence Check must name.
func TestCheckFails(t *testing.T) {
	const C, N, U = Committed, NotCommitted, Unknown
	cases := []struct {
		name  string
		h     History
		want  []AnomalyKind // each must be found
		words []string      // in the explanation
	}{
		{"lost update, concurrent", History{Ops: []Op{
			op("k", 0, 0, 10, 0, C), op("k", 1, 1, 11, 0, C),
		}, Final: final("k", 1)}, []AnomalyKind{DuplicateRead, FinalMismatch}, []string{"2 committed increments read 0 (1 lost updates)", "client 0", "client 1"}},
		{"lost update, no final value", History{Ops: []Op{
			op("k", 0, 0, 10, 0, C), op("k", 1, 1, 11, 0, C), op("k", 0, 12, 13, 1, C),
		}}, []AnomalyKind{DuplicateRead}, []string{"read 0"}},
		{"lost update, sequential in real time", History{Ops: []Op{
			op("k", 0, 0, 1, 0, C), op("k", 1, 2, 3, 0, C),
		}, Final: final("k", 1)}, []AnomalyKind{DuplicateRead, StaleRead}, []string{"began 1ms after a committed one returned having read 0, yet read 0"}},
		{"lost update across nodes and paths", History{Ops: []Op{
			op("k", 0, 0, 10, 0, C), func() Op { o := op("k", 1, 1, 11, 0, C); o.Node, o.Path = "n2", "LockTx"; return o }(),
		}, Final: final("k", 1)}, []AnomalyKind{DuplicateRead}, []string{"on different nodes and through different paths", "anomalies by the paths involved: Do+LockTx: 1; by the nodes involved: n1+n2: 1", "client 1 on n2 via LockTx"}},
		{"stale read without a duplicate", History{Ops: []Op{
			op("k", 0, 10, 11, 1, C), op("k", 1, 12, 13, 0, C),
		}, Final: final("k", 2)}, []AnomalyKind{StaleRead}, []string{"having read 1, yet read 0"}},
		{"final value below the committed increments", History{Ops: []Op{
			op("k", 0, 0, 1, 0, C), op("k", 1, 2, 3, 1, C),
		}, Final: final("k", 1)}, []AnomalyKind{FinalMismatch, OutOfRange}, []string{"final 1 - initial 0 = 1 increments took effect, but 2 committed"}},
		{"a not-committed increment that was committed", History{Ops: []Op{
			op("k", 0, 0, 1, 0, C), op("k", 1, 2, 3, 1, N), op("k", 2, 4, 5, 2, C),
		}, Final: final("k", 3)}, []AnomalyKind{Unexplained, FinalMismatch}, []string{"1 value(s) between initial 0 and final 3", ": 1"}},
		{"unknown outcome that cannot have taken effect, yet the final value needs it", History{Ops: []Op{
			op("k", 0, 0, 1, 0, C), op("k", 1, 0, 2, 0, U),
		}, Final: final("k", 2)}, []AnomalyKind{Unexplained}, nil},
		{"unknown outcome that must have taken effect, but began too late", History{Ops: []Op{
			op("k", 0, 0, 1, 0, C), op("k", 1, 2, 3, 2, C), op("k", 2, 5, 6, 1, U),
		}, Final: final("k", 3)}, []AnomalyKind{StaleRead}, []string{"unknown outcome, shown applied"}},
		{"two of unknown outcome, one of which must have taken effect, both too late", History{Ops: []Op{
			// No anomaly names this one (neither increment of unknown
			// outcome is shown applied on its own): porcupine's partial
			// linearization explains it.
			op("k", 0, 0, 1, 0, C), op("k", 1, 2, 3, 2, C), op("k", 2, 5, 6, 1, U), op("k", 3, 5, 7, 1, U),
		}, Final: final("k", 3)}, nil, []string{`porcupine, key "k": the longest partial linearization places 1 of 5 operations, up to one that read 0, wrote 1`}},
		{"out of range below the initial value", History{Ops: []Op{
			op("k", 0, 0, 1, 4, C), op("k", 1, 2, 3, 6, C), op("k", 1, 4, 5, 5, C),
		}, Initial: map[string]int64{"k": 5}, Final: final("k", 8)}, []AnomalyKind{OutOfRange, StaleRead}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := check(t, c.h)
			if r.Verdict != NotLinearizable || r.Err() == nil {
				t.Fatalf("verdict %s, want %s", r.Verdict, NotLinearizable)
			}
			if r.Porcupine != porcupine.Illegal {
				t.Errorf("porcupine says %s, want Illegal (the anomalies are proofs: the two must agree)", r.Porcupine)
			}
			for _, k := range c.want {
				if !hasKind(r, k) {
					t.Errorf("no %q anomaly; have %v", k, kinds(r))
				}
			}
			ex := r.Explain()
			for _, w := range c.words {
				if !strings.Contains(ex, w) {
					t.Errorf("explanation lacks %q", w)
				}
			}
		})
	}
}

// TestCheckRejectsMalformed: malformed operations are an error, not a
// verdict.
func TestCheckRejectsMalformed(t *testing.T) {
	good := op("k", 0, 0, 1, 0, Committed)
	for name, mut := range map[string]func(*Op){
		"no key":            func(o *Op) { o.Key = "" },
		"negative client":   func(o *Op) { o.Client = -1 },
		"return before":     func(o *Op) { o.Return = o.Call.Add(-time.Nanosecond) },
		"no outcome":        func(o *Op) { o.Outcome = 0 },
		"committed no read": func(o *Op) { o.HasRead = false },
		"no times":          func(o *Op) { o.Call = time.Time{} },
	} {
		bad := good
		mut(&bad)
		if _, err := Check(History{Ops: []Op{good, bad}}, Options{}); err == nil {
			t.Errorf("%s: Check accepted %+v", name, bad)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// TestRecorder: operations recorded from several goroutines, with their
// times, reads and outcomes.
func TestRecorder(t *testing.T) {
	var r Recorder
	var wg sync.WaitGroup
	for c := range 4 {
		wg.Go(func() {
			p := r.Begin("k", c, "Do", "n1")
			p.Read(int64(c))
			p.Read(int64(c) + 10) // the last read counts
			o := p.End(Committed, nil)
			if o.Return.Before(o.Call) {
				t.Errorf("return %v before call %v", o.Return, o.Call)
			}
			p.End(Unknown, os.ErrClosed) // ignored
		})
	}
	wg.Wait()
	ops := r.Ops()
	if len(ops) != 4 {
		t.Fatalf("%d operations recorded, want 4", len(ops))
	}
	seen := make(map[int64]bool)
	for _, o := range ops {
		if !o.HasRead || o.Outcome != Committed || o.Err != "" || o.Read != int64(o.Client)+10 {
			t.Errorf("recorded %+v", o)
		}
		seen[o.Read] = true
	}
	if len(seen) != 4 {
		t.Errorf("reads %v, want 4 distinct", seen)
	}
	p := r.Begin("k", 9, "Lock", "")
	o := p.End(NotCommitted, os.ErrDeadlineExceeded)
	if o.HasRead || o.Err == "" || o.Outcome != NotCommitted {
		t.Errorf("recorded %+v", o)
	}
}

// TestCheckHTML: the visualisation is written where asked, and HTMLPath
// follows $TXLOCK_LINEARIZE_HTML.
func TestCheckHTML(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(EnvHTML, "")
	if p := HTMLPath("x"); p != "" {
		t.Errorf("HTMLPath without %s = %q, want \"\"", EnvHTML, p)
	}
	t.Setenv(EnvHTML, filepath.Join(dir, "out.html"))
	if p, want := HTMLPath("a b"), filepath.Join(dir, "out-a_b.html"); p != want {
		t.Errorf("HTMLPath = %q, want %q", p, want)
	}
	t.Setenv(EnvHTML, filepath.Join(dir, "viz"))
	path := HTMLPath("lost")
	if want := filepath.Join(dir, "viz", "lost.html"); path != want {
		t.Errorf("HTMLPath = %q, want %q", path, want)
	}
	h := History{Ops: []Op{op("k", 0, 0, 10, 0, Committed), op("k", 1, 1, 11, 0, Committed)}, Final: final("k", 1)}
	r, err := Check(h, Options{HTML: path})
	if err != nil {
		t.Fatal(err)
	}
	if r.HTML != path || r.HTMLErr != nil {
		t.Fatalf("HTML %q, error %v", r.HTML, r.HTMLErr)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "<html") || !strings.Contains(string(b), "read 0, wrote 1") {
		t.Errorf("the visualisation lacks the history (%d bytes)", len(b))
	}
	if !strings.Contains(r.Explain(), "visualisation: "+path) {
		t.Errorf("the explanation does not name the visualisation")
	}
}

// synthetic builds a long history of a lock handing a counter from holder
// to holder: clients wait (their calls overlap the previous holders'),
// each holder reads the counter and commits, a few outcomes are unknown
// (half of them applied) or not committed. lose, when >= 0, is the index
// of a holder that reads the same value as the one before it (a lost
// update).
func synthetic(n, clients int, lose int) History {
	rng := rand.New(rand.NewPCG(1, 2))
	var ops []Op
	now := t0
	v := int64(0)
	waiting := make([]time.Time, clients) // when each client called
	for c := range waiting {
		waiting[c] = now
	}
	for i := range n {
		c := rng.IntN(clients)
		hold := time.Duration(50+rng.IntN(500)) * time.Microsecond
		read := v
		if i == lose {
			read = v - 1
		}
		o := Op{Key: "k", Client: c, Path: "Do", Call: waiting[c], Read: read, HasRead: true, Outcome: Committed}
		if waiting[c].After(now) {
			now = waiting[c] // the key was free: granted at once
		}
		now = now.Add(hold)
		o.Return = now.Add(time.Duration(rng.IntN(100)) * time.Microsecond)
		switch rng.IntN(500) {
		case 0:
			o.Outcome = Unknown // applied
		case 1:
			o.Outcome = Unknown // not applied
			read = v - 1
		case 2, 3:
			o.Outcome = NotCommitted
			read = v - 1
		}
		if i != lose {
			v = read + 1
		}
		ops = append(ops, o)
		waiting[c] = o.Return.Add(time.Duration(rng.IntN(200)) * time.Microsecond)
	}
	return History{Ops: ops, Final: final("k", v)}
}

// TestTortureSizedHistories: porcupine decides long histories of the
// shape the lock tests record (9 clients, a few increments of unknown
// outcome) both ways, within its timeout: 5,000 increments, 20,000 with
// TXLOCK_TORTURE=1 (make torture).
func TestTortureSizedHistories(t *testing.T) {
	n := 5_000
	if os.Getenv("TXLOCK_TORTURE") == "1" {
		n = 20_000
	}
	for _, c := range []struct {
		name string
		lose int
		want Verdict
	}{{"linearizable", -1, Linearizable}, {"one lost update", n / 2, NotLinearizable}} {
		t.Run(c.name, func(t *testing.T) {
			h := synthetic(n, 9, c.lose)
			start := time.Now()
			r, err := Check(h, Options{Timeout: 3 * time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%v: %s", time.Since(start).Round(time.Millisecond), r.Explain())
			if r.Verdict != c.want {
				t.Fatalf("verdict %s, want %s:\n%s", r.Verdict, c.want, r.Explain())
			}
			if c.lose >= 0 && (r.Porcupine != porcupine.Illegal || !hasKind(r, DuplicateRead)) {
				t.Errorf("porcupine %s, anomalies %v: want Illegal and a value read twice", r.Porcupine, kinds(r))
			}
		})
	}
}
