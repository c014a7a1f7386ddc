package main

import (
	"fmt"
	"strings"
)

// A modePair is a way to take the key in the shared workload, in its two
// modes: the contender that takes it shared (LOCK IN SHARE MODE, txlock's
// Shared()) and the one that takes it exclusively (FOR UPDATE).
type modePair struct {
	shared, exclusive string // contender ids
	label             string
}

// modePairs are the pairs of the shared workload; the first is the raw
// floor of each mode.
var modePairs = []modePair{
	{"raw-shared", "raw", "raw row lock"},
	{"do-shared", "do", "txlock Do"},
	{"locktx-shared", "locktx", "txlock LockTx"},
}

// sharedCell is the cell of the shared workload with g readers.
func sharedCell(g int) cell { return cell{work: sharedRead, hot: true, g: g} }

// sharedTables prints the shared workload: each contender against the raw
// floor of its own mode, the scaling with readers, shared over exclusive
// in the same repetition, then the hot-key table with latencies and
// grants.
func (rec *recorder) sharedTables(b *strings.Builder, cs []*contender) {
	rs := rec.o.readers
	if len(rs) == 0 {
		return
	}
	fmt.Fprintf(b, "### %s\n\n", sharedRead.title())
	b.WriteString("cycles/s (x the raw floor of the same mode: LOCK IN SHARE MODE for shared, FOR UPDATE for exclusive); " +
		"the last column is the median throughput at the most readers over that at the fewest\n\n| contender | mode |")
	for _, g := range rs {
		fmt.Fprintf(b, " %d |", g)
	}
	fmt.Fprintf(b, " %d / %d |\n|---|---|", rs[len(rs)-1], rs[0])
	for range rs {
		b.WriteString("---:|")
	}
	b.WriteString("---:|\n")
	for _, p := range modePairs {
		for _, m := range []struct{ id, floor, mode string }{{p.shared, modePairs[0].shared, "shared"}, {p.exclusive, modePairs[0].exclusive, "exclusive"}} {
			if !rec.ran(cs, m.id) {
				continue
			}
			fmt.Fprintf(b, "| %s | %s |", p.label, m.mode)
			for _, g := range rs {
				s, ok := rec.summary(sharedCell(g), m.id)
				if !ok {
					b.WriteString(" – |")
					continue
				}
				r, _ := rec.ratio(sharedCell(g), m.id, m.floor)
				fmt.Fprintf(b, " %s (%.2fx)%s |", thousands(s.thr), r, errMark(s.errors))
			}
			fmt.Fprintf(b, " %s |\n", rec.scaling(m.id))
		}
	}
	b.WriteString("\nshared over exclusive, in the same repetition (median)\n\n")
	rec.pairTable(b, cs, modePairs, rs, sharedCell)
	b.WriteString("\n<details><summary>Shared hot key: latencies and grants (x raw floor: FOR UPDATE)</summary>\n\n")
	rec.hotTable(b, cs, sharedRead, rs, "readers", "cycles/s")
	b.WriteString("</details>\n\n")
}

// ran reports whether contender id was selected for this run.
func (rec *recorder) ran(cs []*contender, id string) bool {
	for _, ct := range cs {
		if ct.id == id {
			return true
		}
	}
	return false
}

// scaling formats the median throughput of contender id at the most
// readers over that at the fewest.
func (rec *recorder) scaling(id string) string {
	rs := rec.o.readers
	lo, ok1 := rec.summary(sharedCell(rs[0]), id)
	hi, ok2 := rec.summary(sharedCell(rs[len(rs)-1]), id)
	if !ok1 || !ok2 || lo.thr == 0 || len(rs) < 2 {
		return "–"
	}
	return fmt.Sprintf("%.2fx", hi.thr/lo.thr)
}

// sharedTargets are the shared workload's figures for the targets table
// (reported, no goal): each txlock mode over the raw floor of that mode,
// and shared over exclusive.
func (rec *recorder) sharedTargets(add func(name string, c cell, a, b string)) {
	for _, g := range rec.o.readers {
		c := sharedCell(g)
		add(fmt.Sprintf("shared hot key, Do Shared / raw LOCK IN SHARE MODE, %d readers", g), c, "do-shared", "raw-shared")
		add(fmt.Sprintf("shared hot key, Do exclusive / raw FOR UPDATE, %d readers", g), c, "do", "raw")
		add(fmt.Sprintf("shared hot key, Do Shared / Do exclusive, %d readers", g), c, "do-shared", "do")
		add(fmt.Sprintf("shared hot key, raw LOCK IN SHARE MODE / raw FOR UPDATE, %d readers", g), c, "raw-shared", "raw")
	}
}
