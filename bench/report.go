package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// recorder keeps every result, writes one JSON line per result as it
// comes, and builds the report.
type recorder struct {
	o       *options
	e       *env
	started time.Time
	results map[cell]map[string][]result // by cell, contender; in repetition order
	f       *os.File
	w       *bufio.Writer
	failed  []string // contenders that could not run in a cell
}

// fail records that contender ct could not run in cell c.
func (rec *recorder) fail(ct *contender, c cell, rep int, err error) {
	msg := fmt.Sprintf("%s, %s, repetition %d: %v", ct.label, c, rep+1, err)
	rec.failed = append(rec.failed, msg)
	fmt.Fprintln(os.Stderr, "txlock-bench: skipped:", msg)
	line, _ := json.Marshal(map[string]any{"type": "failed", "workload": c.work.String(), "mode": c.mode(),
		"goroutines": c.g, "contender": ct.id, "rep": rep, "error": err.Error()})
	rec.w.Write(append(line, '\n'))
}

func newRecorder(o *options, e *env) (*recorder, error) {
	f, err := os.Create(filepath.Join(o.outDir, "results.jsonl"))
	if err != nil {
		return nil, err
	}
	return &recorder{o: o, e: e, started: time.Now(), results: map[cell]map[string][]result{}, f: f, w: bufio.NewWriter(f)}, nil
}

func (rec *recorder) close() {
	rec.w.Flush()
	rec.f.Close()
}

// runLine is the JSON line of one measurement.
type runLine struct {
	Type        string  `json:"type"`
	Workload    string  `json:"workload"`
	Mode        string  `json:"mode"`
	Goroutines  int     `json:"goroutines"`
	Contender   string  `json:"contender"`
	Rep         int     `json:"rep"`
	CyclesPerS  float64 `json:"cycles_per_s"`
	RatioFloor  float64 `json:"ratio_to_floor,omitempty"`
	AcqP50us    float64 `json:"acquire_p50_us"`
	AcqP99us    float64 `json:"acquire_p99_us"`
	HandP50us   float64 `json:"handoff_p50_us,omitempty"`
	HandP99us   float64 `json:"handoff_p99_us,omitempty"`
	Handoffs    int     `json:"handoffs,omitempty"`
	GrantMinMax float64 `json:"grants_min_over_max"`
	GrantCV     float64 `json:"grants_cv"`
	ClientCPUus float64 `json:"client_cpu_us_per_cycle"`
	ServerCPUus float64 `json:"server_cpu_us_per_cycle,omitempty"`
	ForeignCPU  float64 `json:"foreign_cpu_share"`
	Cycles      int64   `json:"cycles"`
	Errors      int64   `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
}

func (rec *recorder) add(r result) {
	m := rec.results[r.cell]
	if m == nil {
		m = map[string][]result{}
		rec.results[r.cell] = m
	}
	m[r.contender] = append(m[r.contender], r)
	if r.errors > 0 {
		fmt.Fprintf(os.Stderr, "txlock-bench: %s, %s: %d errors, first: %s\n", r.contender, r.cell, r.errors, r.firstError)
	}
}

// writeRuns writes the JSON lines of the runs of cell c, each with its
// ratio to the floor's run of the same repetition.
func (rec *recorder) writeRuns(c cell) {
	m := rec.results[c]
	floor := map[int]float64{}
	for _, r := range m["raw"] {
		floor[r.rep] = r.throughput()
	}
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		for _, r := range m[id] {
			rec.writeRun(r, floor[r.rep])
		}
	}
}

func (rec *recorder) writeRun(r result, floor float64) {
	line := runLine{Type: "run", Workload: r.cell.work.String(), Mode: r.cell.mode(), Goroutines: r.cell.g,
		Contender: r.contender, Rep: r.rep, CyclesPerS: round(r.throughput(), 1), Cycles: r.cycles,
		Errors: r.errors, FirstError: r.firstError}
	p50, p99 := percentiles(r.acquire)
	line.AcqP50us, line.AcqP99us = us(p50), us(p99)
	h50, h99 := percentiles(r.handoff)
	line.HandP50us, line.HandP99us, line.Handoffs = us(h50), us(h99), len(r.handoff)
	line.GrantMinMax, line.GrantCV = fairness(r.perG)
	cpu, srv := r.cpuPerCycle()
	line.ClientCPUus = us(cpu)
	if srv >= 0 {
		line.ServerCPUus = us(srv)
	}
	line.ForeignCPU = round(r.foreign, 3)
	if floor > 0 {
		line.RatioFloor = round(r.throughput()/floor, 4)
	}
	b, _ := json.Marshal(line)
	rec.w.Write(append(b, '\n'))
}

// progress prints one line per finished cell.
func (rec *recorder) progress(c cell) {
	rec.writeRuns(c)
	m := rec.results[c]
	var b strings.Builder
	fmt.Fprintf(&b, "  %-8s %s %2d:", c.work, c.mode(), c.g)
	if fl := m["raw"]; len(fl) > 0 {
		fmt.Fprintf(&b, " raw %s/s", thousands(median(throughputs(fl))))
	}
	ids := []string{"do", "do-ip", "getlock", "lease", "redislock"}
	switch c.work {
	case sharedRead:
		ids = []string{"raw-shared", "do", "do-shared", "locktx", "locktx-shared"}
	case permitHold:
		ids = []string{"raw-permits", "do", "do-permits"}
	case hierLock:
		ids = []string{"raw-hier", "do", "do-hier"}
	}
	for _, id := range ids {
		if v, ok := rec.ratio(c, id, "raw"); ok {
			fmt.Fprintf(&b, ", %s %.2fx", id, v)
		}
	}
	var fs []float64
	for _, rs := range m {
		for _, r := range rs {
			fs = append(fs, r.foreign)
		}
	}
	if f := slices.Max(fs); f > foreignWarn {
		fmt.Fprintf(&b, "  (other work on the machine: up to %.0f%% of its CPU)", 100*f)
	}
	fmt.Fprintf(&b, "  [%v]", time.Since(rec.started).Round(time.Second))
	fmt.Fprintln(os.Stderr, b.String())
	rec.w.Flush()
}

// foreignWarn is the share of the machine's CPU used by other work during
// a measurement above which the run is flagged as disturbed.
const foreignWarn = 0.10

// ratio is the median over repetitions of a's throughput over b's, both
// measured in the same repetition of cell c.
func (rec *recorder) ratio(c cell, a, b string) (float64, bool) {
	ra, rb := rec.results[c][a], rec.results[c][b]
	var xs []float64
	for _, x := range ra {
		for _, y := range rb {
			if x.rep == y.rep && y.cycles > 0 {
				xs = append(xs, x.throughput()/y.throughput())
			}
		}
	}
	if len(xs) == 0 {
		return 0, false
	}
	return median(xs), true
}

// summary is a contender's medians in one cell.
type summary struct {
	thr, ratio    float64
	hasRatio      bool
	p50, p99      time.Duration
	h50, h99      time.Duration // hand-offs, median over repetitions; 0 when not traced
	minMax, cv    float64
	errors        int64
	reps          int
	hasAcquireLat bool
	cpu, srvCPU   time.Duration // per cycle, median; srvCPU -1 when unknown
}

func (rec *recorder) summary(c cell, id string) (summary, bool) {
	rs := rec.results[c][id]
	if len(rs) == 0 {
		return summary{}, false
	}
	var s summary
	s.reps = len(rs)
	s.thr = median(throughputs(rs))
	if id != "raw" {
		s.ratio, s.hasRatio = rec.ratio(c, id, "raw")
	} else {
		s.ratio, s.hasRatio = 1, true
	}
	var p50s, p99s, h50s, h99s, mm, cvs, cpus, srvs []float64
	for _, r := range rs {
		cpu, srv := r.cpuPerCycle()
		cpus = append(cpus, float64(cpu))
		if srv >= 0 {
			srvs = append(srvs, float64(srv))
		}
		p50, p99 := percentiles(r.acquire)
		p50s, p99s = append(p50s, float64(p50)), append(p99s, float64(p99))
		if h50, h99 := percentiles(r.handoff); len(r.handoff) > 0 {
			h50s, h99s = append(h50s, float64(h50)), append(h99s, float64(h99))
		}
		a, b := fairness(r.perG)
		mm, cvs = append(mm, a), append(cvs, b)
		s.errors += r.errors
		if p99 > 0 {
			s.hasAcquireLat = true
		}
	}
	s.p50, s.p99 = time.Duration(median(p50s)), time.Duration(median(p99s))
	s.h50, s.h99 = time.Duration(median(h50s)), time.Duration(median(h99s))
	s.minMax, s.cv = median(mm), median(cvs)
	s.cpu, s.srvCPU = time.Duration(median(cpus)), -1
	if len(srvs) > 0 {
		s.srvCPU = time.Duration(median(srvs))
	}
	return s, true
}

// report is what the run prints and writes.
type report struct {
	markdown    string
	summaryJSON []string
}

// target is one goal of issue 8, checked on this run's ratios.
type target struct {
	name     string
	measured float64
	goal     float64
	atMost   bool // the goal is an upper bound
	info     bool // no goal: reported only
}

func (t target) met() bool {
	switch {
	case t.info:
		return true
	case t.atMost:
		return t.measured <= t.goal
	default:
		return t.measured >= t.goal
	}
}

func (rec *recorder) report(cs []*contender, plan []cell, elapsed time.Duration) report {
	o, e := rec.o, rec.e
	var b strings.Builder
	var js []string
	fmt.Fprintf(&b, "## txlock-bench results\n\n")
	fmt.Fprintf(&b, "- command: `go run . %s` (in `bench/`), %s\n", strings.Join(o.args, " "), time.Now().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- machine: %s\n", e.machine)
	fmt.Fprintf(&b, "- server: %s over %s; %s\n", e.serverVersion, e.transport, e.redisNote)
	fmt.Fprintf(&b, "- each contender: %v warm-up + %v measured, %d interleaved repetitions (order rotated each repetition), %v in all\n",
		o.warmup, o.duration, o.reps, elapsed.Round(time.Second))
	biz := "a literal id (`UPDATE biz SET v = v + 1 WHERE id = 7`), so the DSN only changes the lock's own statements"
	if !e.bizLiteral {
		biz = "a `?` placeholder: on a DSN without interpolateParams it costs a prepare + execute"
	}
	fmt.Fprintf(&b, "- business statement: %s\n", biz)
	var fs []float64
	disturbed := 0
	for _, m := range rec.results {
		for _, rs := range m {
			for _, r := range rs {
				fs = append(fs, r.foreign)
				if r.foreign > foreignWarn {
					disturbed++
				}
			}
		}
	}
	if len(fs) > 0 {
		fmt.Fprintf(&b, "- other work on the machine during the measurements (other processes, steal; the server's work for other clients counts as ours): median %.0f%%, max %.0f%% of its CPU; %d of %d measurements above %.0f%%\n",
			100*median(fs), 100*slices.Max(fs), disturbed, len(fs), 100*foreignWarn)
	}
	fmt.Fprintf(&b, "- ratios: each contender's throughput over the raw floor's *in the same repetition*, median over repetitions; compare ratios, not absolute numbers, across runs\n\n")

	labels := map[string]string{}
	for _, ct := range cs {
		labels[ct.id] = ct.label
	}
	for _, w := range o.workloads {
		switch w {
		case sharedRead:
			rec.sharedTables(&b, cs)
			continue
		case permitHold:
			rec.semaphoreTables(&b, cs)
			continue
		case hierLock:
			rec.hierarchyTables(&b, cs)
			continue
		}
		if len(o.own) > 0 {
			fmt.Fprintf(&b, "### %s, each goroutine on its own key\n\ncycles/s (x raw floor)\n\n| contender |", w.title())
			countColumns(&b, 1, o.own)
			for _, ct := range cs {
				if !ct.runs(cell{work: w}) {
					continue
				}
				fmt.Fprintf(&b, "| %s |", ct.label)
				for _, g := range o.own {
					s, ok := rec.summary(cell{work: w, g: g}, ct.id)
					if !ok {
						b.WriteString(" – |")
						continue
					}
					fmt.Fprintf(&b, " %s (%.2fx)%s |", thousands(s.thr), s.ratio, errMark(s.errors))
				}
				b.WriteString("\n")
			}
			b.WriteString("\n")
			rec.cpuTable(&b, cs, w, o.own)
		}
		if len(o.hot) > 0 {
			fmt.Fprintf(&b, "### %s, all goroutines on one hot key\n\n", w.title())
			rec.hotTable(&b, cs, w, o.hot, "goroutines", "handoffs/s")
		}
	}

	// Summary JSON lines.
	for _, c := range plan {
		for _, ct := range cs {
			s, ok := rec.summary(c, ct.id)
			if !ok {
				continue
			}
			line, _ := json.Marshal(map[string]any{
				"type": "summary", "workload": c.work.String(), "mode": c.mode(), "goroutines": c.g,
				"contender": ct.id, "label": ct.label, "cycles_per_s": round(s.thr, 1), "ratio_to_floor": round(s.ratio, 4),
				"acquire_p50_us": us(s.p50), "acquire_p99_us": us(s.p99), "handoff_p50_us": us(s.h50), "handoff_p99_us": us(s.h99),
				"grants_min_over_max": round(s.minMax, 3), "grants_cv": round(s.cv, 3), "errors": s.errors, "reps": s.reps,
				"client_cpu_us_per_cycle": us(s.cpu), "server_cpu_us_per_cycle": us(s.srvCPU),
			})
			js = append(js, string(line))
		}
	}

	if len(rec.failed) > 0 {
		b.WriteString("### Runs that failed (left out of the medians)\n\n")
		for _, f := range rec.failed {
			fmt.Fprintf(&b, "- %s\n", f)
		}
		b.WriteString("\n")
	}
	ts := rec.targets()
	if len(ts) > 0 {
		b.WriteString("### Targets of issue 8, checked on this run\n\n| target | measured | goal | |\n|---|---:|---:|---|\n")
		for _, t := range ts {
			goal, mark := "≥ "+fmt.Sprintf("%.2fx", t.goal), "met"
			switch {
			case t.info:
				goal, mark = "(reported)", ""
			case t.atMost:
				goal = "≤ " + fmt.Sprintf("%.2fx", t.goal)
			}
			if !t.met() {
				mark = "**not met**"
			}
			fmt.Fprintf(&b, "| %s | %.2fx | %s | %s |\n", t.name, t.measured, goal, mark)
			line, _ := json.Marshal(map[string]any{"type": "target", "name": t.name, "measured": round(t.measured, 4),
				"goal": t.goal, "at_most": t.atMost, "info": t.info, "met": t.met()})
			js = append(js, string(line))
		}
		b.WriteString("\n")
	}
	return report{markdown: b.String(), summaryJSON: js}
}

// hotTable prints the table of the cells of workload w on the hot key,
// with gs goroutines (named what), their throughput in unit.
func (rec *recorder) hotTable(b *strings.Builder, cs []*contender, w workload, gs []int, what, unit string) {
	fmt.Fprintf(b, "| contender | %s | %s | x raw floor | acquire p50 | acquire p99 | grants min/max | grants CV |\n|---|---:|---:|---:|---:|---:|---:|---:|\n", what, unit)
	for _, ct := range cs {
		if !ct.runs(cell{work: w, hot: true}) {
			continue
		}
		for _, g := range gs {
			s, ok := rec.summary(cell{work: w, hot: true, g: g}, ct.id)
			if !ok {
				continue
			}
			fmt.Fprintf(b, "| %s | %d | %s%s | %.2fx | %s | %s | %.2f | %.2f |\n", ct.label, g, thousands(s.thr), errMark(s.errors), s.ratio,
				ms(s.p50), ms(s.p99), s.minMax, s.cv)
		}
	}
	b.WriteString("\n")
}

// pairTable prints, for each of pairs that ran, the median over
// repetitions of its first contender's throughput (shared) over its
// second's (exclusive) in the same repetition, at each count of gs, in
// the cells cellOf gives.
func (rec *recorder) pairTable(b *strings.Builder, cs []*contender, pairs []modePair, gs []int, cellOf func(int) cell) {
	b.WriteString("| |")
	countColumns(b, 1, gs)
	for _, p := range pairs {
		if !rec.ran(cs, p.shared) || !rec.ran(cs, p.exclusive) {
			continue
		}
		fmt.Fprintf(b, "| %s |", p.label)
		for _, g := range gs {
			if r, ok := rec.ratio(cellOf(g), p.shared, p.exclusive); ok {
				fmt.Fprintf(b, " %.2fx |", r)
			} else {
				b.WriteString(" – |")
			}
		}
		b.WriteString("\n")
	}
}

// countColumns ends a table's header whose first left columns are
// written: one right-aligned column per count of gs.
func countColumns(b *strings.Builder, left int, gs []int) {
	for _, g := range gs {
		fmt.Fprintf(b, " %d |", g)
	}
	b.WriteString("\n|" + strings.Repeat("---|", left))
	for range gs {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
}

// cpuTable prints the CPU time per cycle of each contender of workload w
// on own keys, at gs goroutines: this process (the client: driver, pool,
// gorm, txlock) and the server.
func (rec *recorder) cpuTable(b *strings.Builder, cs []*contender, w workload, gs []int) {
	b.WriteString("<details><summary>CPU per cycle, µs: client (this process) / server")
	if rec.e.serverPID == 0 {
		b.WriteString(" (remote: not measured)")
	}
	b.WriteString("</summary>\n\n| contender |")
	countColumns(b, 1, gs)
	for _, ct := range cs {
		if !ct.runs(cell{work: w}) {
			continue
		}
		fmt.Fprintf(b, "| %s |", ct.label)
		for _, g := range gs {
			s, ok := rec.summary(cell{work: w, g: g}, ct.id)
			switch {
			case !ok:
				b.WriteString(" – |")
			case s.srvCPU < 0:
				fmt.Fprintf(b, " %.0f |", us(s.cpu))
			default:
				fmt.Fprintf(b, " %.0f / %.0f |", us(s.cpu), us(s.srvCPU))
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\n</details>\n\n")
}

// targets checks the goals of issue 8 that this run measured.
func (rec *recorder) targets() []target {
	var ts []target
	add := func(name string, c cell, a, bID string, goal float64, info bool) {
		if v, ok := rec.ratio(c, a, bID); ok {
			ts = append(ts, target{name: name, measured: v, goal: goal, info: info})
		}
	}
	for _, g := range rec.o.own {
		c := cell{work: lockBusiness, g: g}
		add(fmt.Sprintf("lock+business, Do / raw floor, %d own", g), c, "do", "raw", 0.95, false)
		add(fmt.Sprintf("lock+business, Do (interpolateParams) / raw floor, %d own", g), c, "do-ip", "raw", 0.95, false)
	}
	for _, g := range rec.o.own {
		c := cell{work: lockBusiness, g: g}
		add(fmt.Sprintf("lock+business, Do / GET_LOCK pattern, %d own", g), c, "do", "getlock", 1.0, false)
		add(fmt.Sprintf("lock+business, Do / lease row, %d own", g), c, "do", "lease", 1.7, false)
	}
	for _, g := range rec.o.hot {
		c := cell{work: lockBusiness, hot: true, g: g}
		add(fmt.Sprintf("lock+business, Do / GET_LOCK pattern, %d on a hot key", g), c, "do", "getlock", 1.5, false)
		add(fmt.Sprintf("lock+business, Do / lease row, %d on a hot key", g), c, "do", "lease", 3.0, false)
	}
	for _, w := range rec.o.workloads {
		for _, g := range rec.o.hot {
			add(fmt.Sprintf("%s, hot key handoffs, Do / raw floor, %d goroutines", w, g), cell{work: w, hot: true, g: g}, "do", "raw", 0.9, false)
		}
	}
	report := func(name string, c cell, a, b string) { add(name, c, a, b, 0, true) }
	rec.sharedTargets(report)
	rec.semaphoreTargets(report)
	rec.hierarchyTargets(report)
	for _, c := range planCells(rec.o) {
		add(fmt.Sprintf("A/A control: raw again / raw, %s", c), c, "raw-again", "raw", 0, true)
	}
	if len(rec.o.own) > 0 {
		g := rec.o.own[0]
		c := cell{work: lockBusiness, g: g}
		add(fmt.Sprintf("lock's cost: raw floor / business tx alone, %d own (design: 0.72x)", g), c, "raw", "biz-alone", 0, true)
		add(fmt.Sprintf("lock's cost: Do / business tx alone, %d own", g), c, "do", "biz-alone", 0, true)
		add(fmt.Sprintf("lock's cost: Do / gorm business tx alone, %d own", g), c, "do", "gorm-biz-alone", 0, true)
		add(fmt.Sprintf("stretch potential: raw without BEGIN (autocommit=0) / business tx alone, %d own", g), c, "raw-implicit", "biz-alone", 0, true)
		for _, gg := range rec.o.own {
			add(fmt.Sprintf("lock only, Do / raw floor, %d own", gg), cell{work: lockOnly, g: gg}, "do", "raw", 0, true)
		}
	}
	return ts
}

func throughputs(rs []result) []float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = r.throughput()
	}
	return xs
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentiles returns the p50 and p99 of ds (nearest rank).
func percentiles(ds []time.Duration) (time.Duration, time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return at(0.50), at(0.99)
}

// fairness returns the fewest grants of a goroutine over the most (1 is
// perfectly even), and the coefficient of variation of the grants.
func fairness(perG []int64) (float64, float64) {
	if len(perG) < 2 {
		return 1, 0
	}
	lo, hi := slices.Min(perG), slices.Max(perG)
	var sum, sq float64
	for _, n := range perG {
		sum += float64(n)
	}
	mean := sum / float64(len(perG))
	for _, n := range perG {
		sq += (float64(n) - mean) * (float64(n) - mean)
	}
	if hi == 0 || mean == 0 {
		return 0, 0
	}
	return float64(lo) / float64(hi), math.Sqrt(sq/float64(len(perG))) / mean
}

func errMark(n int64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" ⚠%d err", n)
}

func round(x float64, places int) float64 {
	p := math.Pow(10, float64(places))
	return math.Round(x*p) / p
}

func us(d time.Duration) float64 { return round(float64(d)/float64(time.Microsecond), 1) }

func ms(d time.Duration) string {
	if d == 0 {
		return "–"
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + " ms"
}

// thousands formats x rounded, with comma separators: 12,345.
func thousands(x float64) string {
	s := strconv.FormatInt(int64(math.Round(x)), 10)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}
