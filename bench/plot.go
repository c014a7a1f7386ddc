package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// style is how one contender is drawn: the floor black, txlock in blues
// and greens, the peers in warm colours, the references grey and dashed.
type style struct {
	color  color.Color
	dashes []vg.Length
	width  vg.Length
	glyph  draw.GlyphDrawer
}

var styles = map[string]style{
	"raw":            {color.RGBA{0, 0, 0, 255}, nil, 2.5, draw.CircleGlyph{}},
	"raw-implicit":   {color.RGBA{0, 0, 0, 255}, []vg.Length{vg.Points(2), vg.Points(3)}, 1.5, draw.BoxGlyph{}},
	"raw-again":      {color.RGBA{90, 90, 90, 255}, nil, 1, draw.CircleGlyph{}},
	"biz-alone":      {color.RGBA{120, 120, 120, 255}, []vg.Length{vg.Points(6), vg.Points(3)}, 1.5, draw.CircleGlyph{}},
	"gorm-biz-alone": {color.RGBA{170, 170, 170, 255}, []vg.Length{vg.Points(2), vg.Points(2)}, 1.5, draw.CircleGlyph{}},
	"do":             {color.RGBA{31, 90, 200, 255}, nil, 2, draw.SquareGlyph{}},
	"do-ip":          {color.RGBA{90, 160, 240, 255}, []vg.Length{vg.Points(5), vg.Points(2)}, 1.5, draw.SquareGlyph{}},
	"locktx":         {color.RGBA{20, 140, 90, 255}, nil, 1.5, draw.TriangleGlyph{}},
	"locktx-ip":      {color.RGBA{90, 200, 140, 255}, []vg.Length{vg.Points(5), vg.Points(2)}, 1.5, draw.TriangleGlyph{}},
	"decorator":      {color.RGBA{120, 60, 190, 255}, nil, 1.5, draw.PyramidGlyph{}},
	"decorator-ip":   {color.RGBA{175, 130, 230, 255}, []vg.Length{vg.Points(5), vg.Points(2)}, 1.5, draw.PyramidGlyph{}},
	"getlock":        {color.RGBA{220, 110, 20, 255}, nil, 2, draw.CrossGlyph{}},
	"lease":          {color.RGBA{200, 30, 40, 255}, nil, 2, draw.PlusGlyph{}},
	"redislock":      {color.RGBA{150, 40, 100, 255}, []vg.Length{vg.Points(1), vg.Points(3)}, 2, draw.RingGlyph{}},
}

// writePlot draws throughput against goroutines: one row per workload,
// own keys on the left, the hot key in the middle, the legend on the right.
func writePlot(path string, rec *recorder, cs []*contender, o *options, notes []string) error {
	var works []workload // the special workloads are not drawn
	for _, w := range o.workloads {
		if !w.special() {
			works = append(works, w)
		}
	}
	rows := len(works)
	cols := 0
	if len(o.own) > 0 {
		cols++
	}
	if len(o.hot) > 0 {
		cols++
	}
	if rows == 0 || cols == 0 {
		return nil
	}
	plots := make([][]*plot.Plot, rows)
	legend := plot.NewLegend()
	legend.Top, legend.Left = true, true
	legend.TextStyle.Font.Size = vg.Points(11)
	legend.ThumbnailWidth = vg.Points(28)
	inLegend := map[string]bool{}
	for r, w := range works {
		for _, hot := range []bool{false, true} {
			gs := o.own
			if hot {
				gs = o.hot
			}
			if len(gs) == 0 {
				continue
			}
			p := plot.New()
			p.Title.TextStyle.Font.Size = vg.Points(13)
			if hot {
				p.Title.Text = w.title() + "\nall goroutines on one hot key"
				p.X.Label.Text = "goroutines on the hot key"
				p.Y.Label.Text = "handoffs/s"
			} else {
				p.Title.Text = w.title() + "\neach goroutine on its own key"
				p.X.Label.Text = "goroutines"
				p.Y.Label.Text = "cycles/s"
			}
			p.X.Scale = plot.LogScale{}
			var ticks []plot.Tick
			for _, g := range gs {
				ticks = append(ticks, plot.Tick{Value: float64(g), Label: strconv.Itoa(g)})
			}
			p.X.Tick.Marker = plot.ConstantTicks(ticks)
			p.X.Min, p.X.Max = float64(gs[0])/1.3, float64(gs[len(gs)-1])*1.3
			p.Y.Min = 0
			p.Add(plotter.NewGrid())
			for _, ct := range cs {
				if !ct.runs(cell{work: w, hot: hot}) {
					continue
				}
				var pts plotter.XYs
				for _, g := range gs {
					if s, ok := rec.summary(cell{work: w, hot: hot, g: g}, ct.id); ok {
						pts = append(pts, plotter.XY{X: float64(g), Y: s.thr})
					}
				}
				if len(pts) == 0 {
					continue
				}
				line, points, err := plotter.NewLinePoints(pts)
				if err != nil {
					return err
				}
				st, ok := styles[ct.id]
				if !ok {
					st = style{color.RGBA{128, 128, 128, 255}, nil, 1, draw.CircleGlyph{}}
				}
				line.Color, line.Dashes, line.Width = st.color, st.dashes, st.width
				points.Color, points.Shape, points.Radius = st.color, st.glyph, vg.Points(3)
				p.Add(line, points)
				if !inLegend[ct.id] {
					inLegend[ct.id] = true
					legend.Add(ct.label, line, points)
				}
			}
			plots[r] = append(plots[r], p)
		}
	}

	const w, h = 16 * vg.Inch, 10 * vg.Inch
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110))
	dc := draw.New(img)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	// The plots take the left part; the legend and the run's context the
	// right.
	legendW := 4.6 * vg.Inch
	plotArea := dc
	plotArea.Max.X -= legendW
	t := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Points(18), PadY: vg.Points(18),
		PadTop: vg.Points(10), PadBottom: vg.Points(10), PadLeft: vg.Points(10), PadRight: vg.Points(10)}
	canvases := plot.Align(plots, t, plotArea)
	for r := range plots {
		for c, p := range plots[r] {
			p.Draw(canvases[r][c])
		}
	}
	side := dc
	side.Min.X = dc.Max.X - legendW
	side.Max.Y -= vg.Points(30)
	legend.Draw(side)
	note := plot.NewLegend()
	note.Top, note.Left = false, true
	note.TextStyle.Font.Size = vg.Points(9)
	for _, s := range notes {
		note.Add(s)
	}
	noteArea := side
	noteArea.Min.Y += vg.Points(20)
	note.Draw(noteArea)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// replot draws the plot of an earlier run from its results.jsonl: the
// medians of the runs' throughputs, as the run itself would have.
func replot(o *options) error {
	f, err := os.Open(o.replot)
	if err != nil {
		return err
	}
	defer f.Close()
	rec := &recorder{o: o, results: map[cell]map[string][]result{}}
	seen := map[string]bool{}
	works, own, hot := map[workload]bool{}, map[int]bool{}, map[int]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l runLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil || l.Type != "run" || l.Workload != lockOnly.String() && l.Workload != lockBusiness.String() {
			// The special workloads are not drawn.
			continue
		}
		c := cell{work: lockOnly, hot: l.Mode == "hot", g: l.Goroutines}
		if l.Workload == "business" {
			c.work = lockBusiness
		}
		works[c.work] = true
		if c.hot {
			hot[c.g] = true
		} else {
			own[c.g] = true
		}
		seen[l.Contender] = true
		m := rec.results[c]
		if m == nil {
			m = map[string][]result{}
			rec.results[c] = m
		}
		// One second at the recorded rate gives the same throughput.
		m[l.Contender] = append(m[l.Contender], result{cell: c, contender: l.Contender, rep: l.Rep,
			cycles: int64(math.Round(l.CyclesPerS)), elapsed: time.Second})
	}
	if err := sc.Err(); err != nil {
		return err
	}
	o.workloads, o.own, o.hot = nil, sortedKeys(own), sortedKeys(hot)
	for _, w := range []workload{lockOnly, lockBusiness} {
		if works[w] {
			o.workloads = append(o.workloads, w)
		}
	}
	var cs []*contender
	for _, ct := range allContenders() {
		if seen[ct.id] {
			cs = append(cs, ct)
		}
	}
	reps := 0
	for _, m := range rec.results {
		for _, rs := range m {
			reps = max(reps, len(rs))
		}
	}
	if err := writePlot(o.plotPath, rec, cs, o, []string{
		"redrawn from " + o.replot,
		fmt.Sprintf("medians of %d repetitions per cell; see bench/README.md", reps),
	}); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "txlock-bench: plot written to %s\n", o.plotPath)
	return nil
}

func sortedKeys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
