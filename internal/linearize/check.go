package linearize

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// A History is what Check judges: the operations, and what the database
// held before and after them.
type History struct {
	Ops []Op
	// Initial is each key's counter before the first operation; a key
	// that is absent started at 0.
	Initial map[string]int64
	// Final is each key's counter read from the database after every
	// operation returned (and every write of unknown outcome settled); a
	// key that is absent is not checked against a final value. A final
	// value of a key without operations must equal its initial value.
	Final map[string]int64
}

// Options tunes Check.
type Options struct {
	// Timeout bounds porcupine's search (DefaultTimeout when 0). When it
	// runs out without a verdict, and the history shows no anomaly, the
	// verdict is Undecided.
	Timeout time.Duration
	// HTML, when not empty, is a file that Check writes porcupine's
	// visualisation of the history to (see HTMLPath).
	HTML string
}

// DefaultTimeout is porcupine's search bound when Options.Timeout is 0.
const DefaultTimeout = 2 * time.Minute

// Verdict is Check's answer.
type Verdict string

// Verdicts.
const (
	Linearizable    Verdict = "linearizable"
	NotLinearizable Verdict = "NOT linearizable"
	Undecided       Verdict = "undecided (porcupine timed out, no anomaly found)"
)

// AnomalyKind names a way a history breaks the counter's linearizability.
// Each is a proof on its own: a history with an anomaly is not
// linearizable whatever porcupine says.
type AnomalyKind string

// Anomaly kinds.
const (
	// DuplicateRead: two or more committed increments read the same value
	// (all but one of their updates are lost).
	DuplicateRead AnomalyKind = "value read twice"
	// StaleRead: a committed increment began after another committed one
	// had returned, yet read a value no newer than that one's read.
	StaleRead AnomalyKind = "stale read"
	// OutOfRange: a committed increment read a value below the initial
	// one, or at or above the final one.
	OutOfRange AnomalyKind = "value out of range"
	// FinalMismatch: the final value is not the initial one plus the
	// committed increments plus some of those of unknown outcome.
	FinalMismatch AnomalyKind = "final value"
	// Unexplained: a value between the initial and the final one that no
	// committed increment nor one of unknown outcome read: some write
	// came from elsewhere, or an increment classified as not committed
	// was committed.
	Unexplained AnomalyKind = "unexplained value"
)

// An Anomaly is one piece of evidence against linearizability.
type Anomaly struct {
	Kind   AnomalyKind
	Key    string
	Value  int64
	Ops    []Op // the operations involved, if any
	Detail string
}

// KeyResult is Check's account of one key.
type KeyResult struct {
	Key          string
	Ops          int
	Committed    int
	NotCommitted int
	Unknown      int // of unknown outcome (those that read: the others never wrote)
	// UnknownApplied counts the operations of unknown outcome whose write
	// the history shows was committed: the value each read lies between
	// the initial and the final value and was read by no other increment
	// that may have committed (0 for a key without a final value).
	UnknownApplied int
	Initial        int64
	Final          int64
	HasFinal       bool
	Anomalies      int
}

// A Result is Check's verdict with the evidence.
type Result struct {
	Verdict   Verdict
	Keys      []KeyResult // sorted by key
	Anomalies []Anomaly
	// Porcupine is porcupine's own answer (Ok, Illegal, Unknown).
	Porcupine porcupine.CheckResult
	// Partial describes, for each key porcupine could not linearize, how
	// far its longest partial linearization went. It is filled only when
	// porcupine ran again verbosely: when no anomaly explains its verdict,
	// or when the visualisation was asked for.
	Partial []string
	// Applied lists the operations of unknown outcome that the history
	// shows were committed (see KeyResult.UnknownApplied).
	Applied []Op
	// HTML is the visualisation written, if any, and HTMLErr why it could
	// not be.
	HTML    string
	HTMLErr error
	// Base is the earliest call: times in the explanation are relative to
	// it.
	Base time.Time
}

// Err returns nil when the verdict is Linearizable, else an error carrying
// the explanation.
func (r Result) Err() error {
	if r.Verdict == Linearizable {
		return nil
	}
	return fmt.Errorf("linearize: %s", r.Explain())
}

// Totals returns the counts over every key.
func (r Result) Totals() KeyResult {
	var t KeyResult
	for _, k := range r.Keys {
		t.Ops += k.Ops
		t.Committed += k.Committed
		t.NotCommitted += k.NotCommitted
		t.Unknown += k.Unknown
		t.UnknownApplied += k.UnknownApplied
		t.Anomalies += k.Anomalies
	}
	return t
}

// Summary is a one-line account for logs: the verdict and the sizes.
func (r Result) Summary() string {
	t := r.Totals()
	return fmt.Sprintf("%s (porcupine: %s): %d operations on %d keys: %d committed, %d not committed, %d of unknown outcome (%d shown committed by the history), %d anomalies",
		r.Verdict, r.Porcupine, t.Ops, len(r.Keys), t.Committed, t.NotCommitted, t.Unknown, t.UnknownApplied, len(r.Anomalies))
}

// maxListed bounds the anomalies Explain lists per kind and key.
const maxListed = 12

// Explain returns the verdict with its evidence, readable: per key its
// counts, then the anomalies with the operations involved (at most a dozen
// of each kind per key, the count of the rest), then porcupine's partial
// linearizations when it found no linearization and no anomaly explains
// why.
func (r Result) Explain() string {
	var b strings.Builder
	b.WriteString(r.Summary())
	for _, k := range r.Keys {
		fmt.Fprintf(&b, "\n  key %q: %d operations, %d committed, %d not committed, %d unknown (%d shown committed); initial %d",
			k.Key, k.Ops, k.Committed, k.NotCommitted, k.Unknown, k.UnknownApplied, k.Initial)
		if k.HasFinal {
			fmt.Fprintf(&b, ", final %d", k.Final)
		}
		if k.Anomalies > 0 {
			fmt.Fprintf(&b, "; %d anomalies", k.Anomalies)
		}
	}
	if paths, nodes := r.Involvement(); len(paths) > 0 {
		fmt.Fprintf(&b, "\n  anomalies by the paths involved: %s; by the nodes involved: %s", countList(paths), countList(nodes))
	}
	listed := make(map[string]int)
	for _, a := range r.Anomalies {
		id := a.Key + "\x00" + string(a.Kind)
		listed[id]++
		if n := listed[id]; n > maxListed {
			continue
		}
		fmt.Fprintf(&b, "\n  %s, key %q: %s", a.Kind, a.Key, a.Detail)
		for _, op := range a.Ops {
			b.WriteString("\n      ")
			b.WriteString(describeOp(op, r.Base))
		}
	}
	for id, n := range listed {
		if n > maxListed {
			key, kind, _ := strings.Cut(id, "\x00")
			fmt.Fprintf(&b, "\n  ... and %d more %s anomalies on key %q", n-maxListed, kind, key)
		}
	}
	for _, p := range r.Partial {
		b.WriteString("\n  ")
		b.WriteString(p)
	}
	if r.Porcupine == porcupine.Ok && len(r.Anomalies) > 0 {
		b.WriteString("\n  porcupine found a linearization although the anomalies above prove there is none: a bug of package linearize")
	}
	if r.HTML != "" {
		fmt.Fprintf(&b, "\n  visualisation: %s", r.HTML)
	}
	if r.HTMLErr != nil {
		fmt.Fprintf(&b, "\n  visualisation not written: %v", r.HTMLErr)
	}
	return b.String()
}

// Involvement counts, over the anomalies that name two or more operations
// (values read twice, stale reads), the combinations of paths and of nodes
// they involve: "Do+LockTx" counts the anomalies whose operations went
// through exactly those two paths, "Do" those whose all went through Do.
func (r Result) Involvement() (paths, nodes map[string]int) {
	paths, nodes = make(map[string]int), make(map[string]int)
	for _, a := range r.Anomalies {
		if len(a.Ops) < 2 {
			continue
		}
		ps, ns := make([]string, 0, len(a.Ops)), make([]string, 0, len(a.Ops))
		for _, op := range a.Ops {
			ps, ns = append(ps, op.Path), append(ns, op.Node)
		}
		slices.Sort(ps)
		slices.Sort(ns)
		paths[strings.Join(slices.Compact(ps), "+")]++
		nodes[strings.Join(slices.Compact(ns), "+")]++
	}
	return paths, nodes
}

// countList formats m as "a: 3, b: 1", largest first.
func countList(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// describeOp formats op for explanations, its times relative to base.
func describeOp(op Op, base time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "client %d", op.Client)
	if op.Node != "" {
		fmt.Fprintf(&b, " on %s", op.Node)
	}
	if op.Path != "" {
		fmt.Fprintf(&b, " via %s", op.Path)
	}
	fmt.Fprintf(&b, ": call %s, return %s, ", rel(op.Call, base), rel(op.Return, base))
	if op.HasRead {
		fmt.Fprintf(&b, "read %d, ", op.Read)
	} else {
		b.WriteString("no read, ")
	}
	b.WriteString(op.Outcome.String())
	if op.Err != "" {
		fmt.Fprintf(&b, " (%s)", op.Err)
	}
	return b.String()
}

// rel formats t as seconds after base, to the microsecond.
func rel(t, base time.Time) string {
	return fmt.Sprintf("+%.6fs", t.Sub(base).Seconds())
}

// Check judges h: whether the committed increments of every key, with any
// subset of those of unknown outcome, can be ordered into one chain of
// increments consistent with real time and with the initial and final
// values. It fails only on malformed input (an operation without a key,
// with a negative client, an unknown outcome, a return before its call, or
// committed without a read).
func Check(h History, o Options) (Result, error) {
	if err := validate(h.Ops); err != nil {
		return Result{}, err
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	r := Result{Base: base(h.Ops)}
	byKey := make(map[string][]Op)
	for _, op := range h.Ops {
		byKey[op.Key] = append(byKey[op.Key], op)
	}
	for k := range h.Final {
		if _, ok := byKey[k]; !ok {
			byKey[k] = nil
		}
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	slices.Sort(keys)

	for _, k := range keys {
		kr, applied, anomalies := analyze(k, byKey[k], h)
		r.Keys = append(r.Keys, kr)
		r.Applied = append(r.Applied, applied...)
		r.Anomalies = append(r.Anomalies, anomalies...)
	}
	ops := porcupineHistory(h, keys, byKey, r.Base)
	r.Porcupine = runPorcupine(ops, o, &r)
	switch {
	case len(r.Anomalies) > 0 || r.Porcupine == porcupine.Illegal:
		r.Verdict = NotLinearizable
	case r.Porcupine == porcupine.Ok:
		r.Verdict = Linearizable
	default:
		r.Verdict = Undecided
	}
	return r, nil
}

// validate checks that ops are well formed.
func validate(ops []Op) error {
	for i, op := range ops {
		var problem string
		switch {
		case op.Key == "":
			problem = "no key"
		case op.Client < 0:
			problem = "negative client"
		case op.Call.IsZero() || op.Return.IsZero():
			problem = "no call or return time"
		case op.Return.Before(op.Call):
			problem = "returns before its call"
		case op.Outcome != Committed && op.Outcome != NotCommitted && op.Outcome != Unknown:
			problem = "no outcome (want Committed, NotCommitted or Unknown)"
		case op.Outcome == Committed && !op.HasRead:
			problem = "committed without a read: record the value it read with Pending.Read"
		}
		if problem != "" {
			return fmt.Errorf("linearize: operation %d (%+v): %s", i, op, problem)
		}
	}
	return nil
}

// base returns the earliest call of ops.
func base(ops []Op) time.Time {
	var b time.Time
	for i, op := range ops {
		if i == 0 || op.Call.Before(b) {
			b = op.Call
		}
	}
	return b
}

// step kinds of the model.
type stepKind uint8

const (
	stepCommitted stepKind = iota // read v, wrote v+1
	stepMaybe                     // read v, maybe wrote v+1
	stepFinal                     // the final value, read at the end
)

// input is a porcupine operation's input. Values are relative to the
// key's initial value, so that every partition starts at 0.
type input struct {
	kind stepKind
	v    int64
	op   *Op // nil for the final read
	key  string
}

// model is a counter per key (partitioned by key). Its states are sets of
// possible values, since an increment of unknown outcome may or may not
// have taken effect.
func model() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			var order []string
			parts := make(map[string][]porcupine.Operation)
			for _, op := range h {
				k := op.Input.(input).key
				if _, ok := parts[k]; !ok {
					order = append(order, k)
				}
				parts[k] = append(parts[k], op)
			}
			out := make([][]porcupine.Operation, 0, len(order))
			for _, k := range order {
				out = append(out, parts[k])
			}
			return out
		},
		Init: func() []any { return []any{int64(0)} },
		Step: func(state, in, _ any) []any {
			s, i := state.(int64), in.(input)
			switch i.kind {
			case stepCommitted:
				if s == i.v {
					return []any{s + 1}
				}
				return nil
			case stepMaybe:
				if s == i.v {
					return []any{s, s + 1}
				}
				return []any{s}
			default:
				if s == i.v {
					return []any{s}
				}
				return nil
			}
		},
		Hash: func(state any) uint64 { return uint64(state.(int64)) },
		DescribeOperation: func(in, _ any) string {
			i := in.(input)
			switch i.kind {
			case stepCommitted:
				return fmt.Sprintf("read %d, wrote %d", i.v, i.v+1)
			case stepMaybe:
				return fmt.Sprintf("read %d, maybe wrote %d", i.v, i.v+1)
			}
			return fmt.Sprintf("final %d", i.v)
		},
		DescribeState: func(state any) string { return fmt.Sprint(state.(int64)) },
		DescribeOperationMetadata: func(m any) string {
			if m == nil {
				return ""
			}
			return m.(string)
		},
	}
	return nm.ToModel()
}

// porcupineHistory turns h into porcupine operations: committed
// increments, increments of unknown outcome that read, and one final read
// per key that has a final value. Operations that did not commit, or never
// read, had no effect and are left out.
//
// An increment of unknown outcome may have taken effect at any time after
// its call, up to the final read (or ever, when there is none). Left as a
// "maybe" for porcupine, each such increment can be placed anywhere as a
// no-op, and a history that is not linearizable makes porcupine try every
// subset of them: exponential. So they are first reduced, exactly (the
// reduced history is linearizable if and only if the original is):
//
//   - one that read a value some committed increment also read, or a value
//     outside [initial, final), cannot have taken effect in any
//     linearization (the counter never goes back): left out;
//   - one that is the only reader of a value in [initial, final) that no
//     committed increment read must have taken effect (the counter passed
//     through that value): it becomes a committed increment that may take
//     effect until the final read;
//   - the others (two of unknown outcome read the same value, or there is
//     no final value) stay "maybe".
func porcupineHistory(h History, keys []string, byKey map[string][]Op, base time.Time) []porcupine.Operation {
	var last int64
	maxClient := 0
	for _, op := range h.Ops {
		last = max(last, int64(op.Return.Sub(base)))
		maxClient = max(maxClient, op.Client)
	}
	var out []porcupine.Operation
	for _, k := range keys {
		init := h.Initial[k]
		final, hasFinal := h.Final[k]
		committedRead := make(map[int64]bool)
		unknownReaders := make(map[int64]int)
		for _, op := range byKey[k] {
			switch {
			case op.Outcome == Committed:
				committedRead[op.Read] = true
			case op.Outcome == Unknown && op.HasRead:
				unknownReaders[op.Read]++
			}
		}
		for i := range byKey[k] {
			op := &byKey[k][i]
			in := input{kind: stepCommitted, v: op.Read - init, op: op, key: k}
			ret := int64(op.Return.Sub(base))
			switch {
			case op.Outcome == Unknown && op.HasRead:
				if committedRead[op.Read] || op.Read < init || hasFinal && op.Read >= final {
					continue
				}
				ret = math.MaxInt64
				if hasFinal {
					ret = last
				}
				if !hasFinal || unknownReaders[op.Read] > 1 {
					in.kind = stepMaybe
				}
			case op.Outcome != Committed:
				continue
			}
			out = append(out, porcupine.Operation{
				ClientId: op.Client, Input: in, Call: int64(op.Call.Sub(base)), Return: ret,
				Metadata: describeOp(*op, base),
			})
		}
		if hasFinal {
			out = append(out, porcupine.Operation{
				ClientId: maxClient + 1, Input: input{kind: stepFinal, v: final - init, key: k},
				Call: last + 1, Return: last + 2, Metadata: "the final value, read after every operation returned",
			})
		}
	}
	return out
}

// runPorcupine checks ops, writes the visualisation when asked, and
// records in r how far porcupine got when it found no linearization (r's
// anomalies are already known).
func runPorcupine(ops []porcupine.Operation, o Options, r *Result) porcupine.CheckResult {
	m := model()
	res := porcupine.CheckOperationsTimeout(m, ops, o.Timeout)
	if o.HTML == "" && (res != porcupine.Illegal || len(r.Anomalies) > 0) {
		return res
	}
	// Again, verbose (several times slower): the partial linearizations,
	// for the visualisation, and for the explanation when no anomaly
	// explains why porcupine found no linearization.
	vres, info := porcupine.CheckOperationsVerbose(m, ops, o.Timeout)
	if vres == porcupine.Illegal {
		parts := m.Partition(ops)
		for i, part := range info.PartialLinearizationsOperations() {
			var longest []porcupine.Operation
			for _, p := range part {
				if len(p) > len(longest) {
					longest = p
				}
			}
			if i >= len(parts) || len(longest) == len(parts[i]) {
				continue // linearizable
			}
			key := parts[i][0].Input.(input).key
			if len(longest) == 0 {
				r.Partial = append(r.Partial, fmt.Sprintf("porcupine, key %q: no operation of the %d can come first", key, len(parts[i])))
				continue
			}
			lastIn := longest[len(longest)-1].Input.(input)
			r.Partial = append(r.Partial, fmt.Sprintf("porcupine, key %q: the longest partial linearization places %d of %d operations, up to one that %s",
				key, len(longest), len(parts[i]), m.DescribeOperation(lastIn, nil)))
		}
	}
	if o.HTML != "" {
		r.HTML = o.HTML
		if err := porcupine.VisualizePath(m, info, o.HTML); err != nil {
			r.HTML, r.HTMLErr = "", err
		}
	}
	return res
}

// analyze counts key's operations and looks for the anomalies that prove
// a history is not linearizable, each with the operations involved.
// It also returns the operations of unknown outcome shown applied.
func analyze(key string, ops []Op, h History) (KeyResult, []Op, []Anomaly) {
	kr := KeyResult{Key: key, Ops: len(ops), Initial: h.Initial[key]}
	kr.Final, kr.HasFinal = h.Final[key]
	var committed, unknown []Op
	for _, op := range ops {
		switch op.Outcome {
		case Committed:
			kr.Committed++
			committed = append(committed, op)
		case NotCommitted:
			kr.NotCommitted++
		case Unknown:
			if op.HasRead {
				kr.Unknown++
				unknown = append(unknown, op)
			} else {
				// It never read, so it never wrote: as good as not committed.
				kr.NotCommitted++
			}
		}
	}
	var out []Anomaly
	add := func(a Anomaly) {
		a.Key = key
		out = append(out, a)
	}

	readers := make(map[int64][]Op)
	for _, op := range committed {
		readers[op.Read] = append(readers[op.Read], op)
	}
	values := make([]int64, 0, len(readers))
	for v := range readers {
		values = append(values, v)
	}
	slices.Sort(values)
	for _, v := range values {
		if rs := readers[v]; len(rs) > 1 {
			slices.SortFunc(rs, func(a, b Op) int { return a.Call.Compare(b.Call) })
			add(Anomaly{Kind: DuplicateRead, Value: v, Ops: rs,
				Detail: fmt.Sprintf("%d committed increments read %d (%d lost updates)%s", len(rs), v, len(rs)-1, spread(rs))})
		}
		if v < kr.Initial || kr.HasFinal && v >= kr.Final {
			add(Anomaly{Kind: OutOfRange, Value: v, Ops: readers[v],
				Detail: fmt.Sprintf("committed increment(s) read %d, outside [initial %d, final %d)", v, kr.Initial, kr.Final)})
		}
	}

	unknownReaders := make(map[int64]int)
	for _, op := range unknown {
		unknownReaders[op.Read]++
	}
	var applied []Op // the one increment that can have written its value
	for _, op := range unknown {
		if kr.HasFinal && len(readers[op.Read]) == 0 && unknownReaders[op.Read] == 1 && op.Read >= kr.Initial && op.Read < kr.Final {
			kr.UnknownApplied++
			applied = append(applied, op)
		}
	}
	out = append(out, staleReads(key, committed, applied)...)
	if kr.HasFinal {
		n := kr.Final - kr.Initial
		if n < int64(kr.Committed) || n > int64(kr.Committed+kr.Unknown) {
			add(Anomaly{Kind: FinalMismatch, Value: kr.Final,
				Detail: fmt.Sprintf("final %d - initial %d = %d increments took effect, but %d committed and %d are of unknown outcome",
					kr.Final, kr.Initial, n, kr.Committed, kr.Unknown)})
		}
		var missing []int64
		for v := kr.Initial; v < kr.Final; v++ {
			if len(readers[v]) == 0 && unknownReaders[v] == 0 {
				missing = append(missing, v)
			}
		}
		if len(missing) > 0 {
			add(Anomaly{Kind: Unexplained, Value: missing[0],
				Detail: fmt.Sprintf("%d value(s) between initial %d and final %d were read by no committed increment and none of unknown outcome, so some write came from elsewhere or an increment reported as not committed was committed: %s",
					len(missing), kr.Initial, kr.Final, listValues(missing))})
		}
	}
	kr.Anomalies = len(out)
	return kr, applied, out
}

// staleReads finds increments that began after a committed increment
// returned, yet read a value no newer than it read: for each, the one with
// the highest read among those that returned before it began. The
// increments judged are the committed ones and those of unknown outcome
// that the history shows were applied (applied).
func staleReads(key string, committed, applied []Op) []Anomaly {
	byReturn := slices.Clone(committed)
	slices.SortFunc(byReturn, func(a, b Op) int { return a.Return.Compare(b.Return) })
	byCall := append(slices.Clone(committed), applied...)
	slices.SortFunc(byCall, func(a, b Op) int { return a.Call.Compare(b.Call) })
	var out []Anomaly
	best := -1 // index in byReturn of the highest read returned so far
	j := 0
	for _, b := range byCall {
		for j < len(byReturn) && byReturn[j].Return.Before(b.Call) {
			if best < 0 || byReturn[j].Read > byReturn[best].Read {
				best = j
			}
			j++
		}
		if best >= 0 && b.Read <= byReturn[best].Read {
			a := byReturn[best]
			what := "an increment"
			if b.Outcome == Unknown {
				what = "an increment of unknown outcome, shown applied (no other read its value),"
			}
			out = append(out, Anomaly{Kind: StaleRead, Key: key, Value: b.Read, Ops: []Op{a, b},
				Detail: fmt.Sprintf("%s began %v after a committed one returned having read %d, yet read %d%s",
					what, b.Call.Sub(a.Return).Round(time.Microsecond), a.Read, b.Read, spread([]Op{a, b}))})
		}
	}
	return out
}

// spread says which nodes and paths ops went through, when they differ.
func spread(ops []Op) string {
	nodes, paths := make(map[string]bool), make(map[string]bool)
	for _, op := range ops {
		nodes[op.Node], paths[op.Path] = true, true
	}
	var parts []string
	if len(nodes) > 1 {
		parts = append(parts, "on different nodes")
	}
	if len(paths) > 1 {
		parts = append(parts, "through different paths")
	}
	if len(parts) == 0 {
		return ""
	}
	return ", " + strings.Join(parts, " and ")
}

// listValues formats vs, the first 20.
func listValues(vs []int64) string {
	var b strings.Builder
	for i, v := range vs {
		if i == 20 {
			fmt.Fprintf(&b, " ... (%d more)", len(vs)-20)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprint(&b, v)
	}
	return b.String()
}
