package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/txlock/txlock/examples/internal/exampledb"
	"github.com/txlock/txlock/examples/orders"
)

// config is one run of the demo.
type config struct {
	DSN          string
	LockTable    string
	Tables       orders.Tables
	Refunds      int           // concurrent refund requests
	GatewayDelay time.Duration // per refund, lock held
	Self         string        // the executable started as an instance
}

// startTimeout bounds the start of an instance.
const startTimeout = 20 * time.Second

// instance is one running process of the HTTP service.
type instance struct {
	name string
	cmd  *exec.Cmd
	url  string
	done chan struct{} // closed when the process has exited
}

// result is the answer to one refund request.
type result struct {
	n        int
	inst     string
	sent     time.Duration // after the start of the burst
	took     time.Duration
	status   int
	resp     orders.Response
	transErr error
}

// runDemo runs the demo and writes its report to out. It reports whether
// exactly one refund was applied and every other request got a clear
// answer; err is for failures to run at all.
func runDemo(ctx context.Context, cfg config, out io.Writer) (bool, error) {
	if cfg.Refunds < 2 {
		return false, errors.New("want at least 2 refunds")
	}
	started := time.Now()
	db, sqlDB, err := exampledb.OpenMigrated(ctx, cfg.DSN, cfg.LockTable)
	if err != nil {
		return false, err
	}
	defer sqlDB.Close()
	if err := orders.CreateTables(ctx, db, cfg.Tables); err != nil {
		return false, err
	}
	var version string
	if err := db.WithContext(ctx).Raw("SELECT VERSION()").Scan(&version).Error; err != nil {
		return false, err
	}

	// Two instances of the service, as separate processes.
	prefix := strings.TrimSuffix(cfg.Tables.Orders, "orders")
	var insts []*instance
	defer func() {
		for _, in := range insts {
			in.stop()
		}
	}()
	var wg sync.WaitGroup
	startErrs := make([]error, 2)
	insts = make([]*instance, 2)
	for i, name := range []string{"A", "B"} {
		wg.Go(func() {
			insts[i], startErrs[i] = startInstance(ctx, cfg, name, prefix)
		})
	}
	wg.Wait()
	insts = slices.DeleteFunc(insts, func(in *instance) bool { return in == nil })
	if err := errors.Join(startErrs...); err != nil {
		return false, err
	}
	setup := time.Since(started)

	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Refunds}}
	// An order to refund: created and paid through instance A.
	created, err := post(ctx, client, insts[0].url+"/orders", `{"user_id":"u-7","amount":1500}`)
	if err != nil || created.Order == nil {
		return false, fmt.Errorf("creating an order: %v %+v", err, created)
	}
	id := created.Order.ID
	if paid, err := post(ctx, client, fmt.Sprintf("%s/orders/%d/pay", insts[0].url, id), ""); err != nil || paid.Code != "ok" {
		return false, fmt.Errorf("paying order %d: %v %+v", id, err, paid)
	}

	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(out, "txlock demo: concurrent refunds of one order, sent to two processes\n\n")
	fmt.Fprintf(w, "  database\t%s (%s)\n", redact(cfg.DSN), version)
	fmt.Fprintf(w, "  tables\tlock %s; orders %s, refunds %s\n", cfg.LockTable, cfg.Tables.Orders, cfg.Tables.Refunds)
	for _, in := range insts {
		fmt.Fprintf(w, "  instance %s\tpid %d, %s\n", in.name, in.cmd.Process.Pid, in.url)
	}
	fmt.Fprintf(w, "  order #%d\t1500 cents, paid through A\n", id)
	fmt.Fprintf(w, "  setup\t%s (migrations, tables, both instances up)\n", ms(setup))
	w.Flush()
	fmt.Fprintf(out, "\nfiring %d concurrent POST /orders/%d/refund, alternately at A and B\n", cfg.Refunds, id)
	fmt.Fprintf(out, "(the gateway takes %s per refund, while the order's lock is held; the proxy waits up to 2s for the lock)\n\n", ms(cfg.GatewayDelay))

	results := make([]result, cfg.Refunds)
	gate := make(chan struct{})
	burst := time.Now()
	for i := range results {
		in := insts[i%len(insts)]
		wg.Go(func() {
			<-gate
			r := result{n: i + 1, inst: in.name, sent: time.Since(burst)}
			start := time.Now()
			r.resp, r.status, r.transErr = postStatus(ctx, client, fmt.Sprintf("%s/orders/%d/refund", in.url, id))
			r.took = time.Since(start)
			results[i] = r
		})
	}
	burst = time.Now()
	close(gate)
	wg.Wait()
	wall := time.Since(burst)

	// In the order the answers came back.
	slices.SortFunc(results, func(a, b result) int { return int((a.sent + a.took) - (b.sent + b.took)) })
	fmt.Fprintf(w, "  #\tinstance\tsent at\tanswered at\ttook\tHTTP\tanswer\n")
	var applied, already, timeouts, other int
	for _, r := range results {
		answer := r.resp.Code
		switch {
		case r.transErr != nil:
			answer = "transport error: " + r.transErr.Error()
			other++
		case r.status == http.StatusOK && r.resp.Refund != nil:
			answer = fmt.Sprintf("REFUNDED: refund #%d, %d cents, gateway %s", r.resp.Refund.ID, r.resp.Refund.Amount, r.resp.Refund.GatewayID)
			applied++
		case r.resp.Code == "already_refunded":
			answer = "already refunded: " + r.resp.Error
			already++
		case r.resp.Code == "lock_timeout":
			answer = "lock timeout: " + r.resp.Error
			timeouts++
		default:
			answer = r.resp.Code + ": " + r.resp.Error
			other++
		}
		fmt.Fprintf(w, "  %d\t%s\t+%s\t+%s\t%s\t%d\t%s\n", r.n, r.inst, ms(r.sent), ms(r.sent+r.took), ms(r.took), r.status, answer)
	}
	w.Flush()

	repo, err := orders.NewRepository(db, cfg.Tables)
	if err != nil {
		return false, err
	}
	stored, err := repo.CountRefunds(ctx, id)
	if err != nil {
		return false, err
	}
	final, err := repo.Get(ctx, id)
	if err != nil {
		return false, err
	}
	took := make([]time.Duration, len(results))
	for i, r := range results {
		took[i] = r.took
	}
	slices.Sort(took)

	fmt.Fprintf(out, "\nsummary\n")
	fmt.Fprintf(w, "  applied\t%d\t(HTTP 200)\n", applied)
	fmt.Fprintf(w, "  already refunded\t%d\t(HTTP 409, the order was refunded when the request got the lock)\n", already)
	fmt.Fprintf(w, "  lock timeout\t%d\t(HTTP 503, the lock was held longer than the 2s wait)\n", timeouts)
	fmt.Fprintf(w, "  other\t%d\t\n", other)
	fmt.Fprintf(w, "  in the database\t%d\trefund row(s) for order #%d, status %q\n", stored, id, final.Status)
	fmt.Fprintf(w, "  timings\t\tburst %s; answers: fastest %s, median %s, slowest %s\n",
		ms(wall), ms(took[0]), ms(took[len(took)/2]), ms(took[len(took)-1]))
	w.Flush()

	fmt.Fprintf(out, "\nlock acquisitions by outcome, from GET /metrics of each instance (txlock_acquire_duration_seconds_count):\n"+
		"the %d refunds, and on A the order's payment, which takes the order's lock too\n", cfg.Refunds)
	for _, in := range insts {
		line, err := acquisitionsByOutcome(ctx, client, in.url+"/metrics")
		if err != nil {
			line = "unavailable: " + err.Error()
		}
		fmt.Fprintf(w, "  instance %s\t%s\n", in.name, line)
	}
	w.Flush()

	ok := applied == 1 && stored == 1 && other == 0 && already+timeouts == cfg.Refunds-1 && final.Status == orders.StatusRefunded
	if ok {
		fmt.Fprintf(out, "\nOK: exactly one refund applied; the %d other requests were told \"already refunded\" or \"lock timeout\" (total %s)\n", cfg.Refunds-1, ms(time.Since(started)))
	} else {
		fmt.Fprintf(out, "\nFAILED: %d refund(s) answered as applied, %d stored, %d unclear answer(s)\n", applied, stored, other)
	}
	return ok, nil
}

// startInstance runs cfg.Self as an instance of the service and waits
// until it listens.
func startInstance(ctx context.Context, cfg config, name, prefix string) (*instance, error) {
	cmd := exec.Command(cfg.Self, "-addr", "127.0.0.1:0", "-lock-table", cfg.LockTable,
		"-tables-prefix", prefix, "-gateway-delay", cfg.GatewayDelay.String())
	cmd.Env = append(os.Environ(), envRole+"=server", exampledb.EnvDSN+"="+cfg.DSN)
	cmd.Stderr = &prefixWriter{prefix: "[instance " + name + "] ", w: os.Stderr}
	dieWithParent(cmd)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting instance %s: %w", name, err)
	}
	in := &instance{name: name, cmd: cmd, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		_ = cmd.Wait()
		close(in.done)
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	for {
		select {
		case l := <-lines:
			if u, ok := strings.CutPrefix(l, "listening on "); ok {
				in.url = u
				return in, nil
			}
		case <-in.done:
			return nil, fmt.Errorf("instance %s exited before listening (%v)", name, cmd.ProcessState)
		case <-timer.C:
			in.stop()
			return nil, fmt.Errorf("instance %s did not listen within %v", name, startTimeout)
		case <-ctx.Done():
			in.stop()
			return nil, ctx.Err()
		}
	}
}

// stop asks the instance to shut down, and kills it if it does not.
func (in *instance) stop() {
	_ = in.cmd.Process.Signal(os.Interrupt)
	select {
	case <-in.done:
	case <-time.After(5 * time.Second):
		_ = in.cmd.Process.Kill()
		<-in.done
	}
}

func post(ctx context.Context, c *http.Client, url, body string) (orders.Response, error) {
	resp, _, err := postBody(ctx, c, url, body)
	return resp, err
}

func postStatus(ctx context.Context, c *http.Client, url string) (orders.Response, int, error) {
	return postBody(ctx, c, url, "")
}

func postBody(ctx context.Context, c *http.Client, url, body string) (orders.Response, int, error) {
	var out orders.Response
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return out, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return out, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return out, resp.StatusCode, err
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return out, resp.StatusCode, fmt.Errorf("HTTP %d, body %q: %w", resp.StatusCode, bytes.TrimSpace(b), err)
	}
	return out, resp.StatusCode, nil
}

// countRE matches a sample of the acquisition count in the Prometheus
// text format, and outcomeRE its outcome label.
var (
	countRE   = regexp.MustCompile(`(?m)^txlock_acquire_duration_seconds_count\{([^}]*)\} (\S+)$`)
	outcomeRE = regexp.MustCompile(`\boutcome="([^"]*)"`)
)

// acquisitionsByOutcome scrapes url (an instance's /metrics) and renders
// its lock acquisitions by outcome, e.g. "acquired 7, timeout 3".
func acquisitionsByOutcome(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	counts := map[string]float64{}
	for _, m := range countRE.FindAllStringSubmatch(string(b), -1) {
		o := outcomeRE.FindStringSubmatch(m[1])
		v, err := strconv.ParseFloat(m[2], 64)
		if o == nil || err != nil {
			continue
		}
		counts[o[1]] += v
	}
	if len(counts) == 0 {
		return "none recorded", nil
	}
	var parts []string
	for _, o := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%s %g", o, counts[o]))
	}
	return strings.Join(parts, ", "), nil
}

// ms renders d in milliseconds, e.g. "12.3ms".
func ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d >= 100*time.Millisecond:
		return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
}

// prefixWriter prefixes each line written through it.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	w      io.Writer
	bol    bool
}

// Write writes b to the underlying writer, with the prefix at the start
// of each line.
func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var buf bytes.Buffer
	for _, c := range b {
		if !p.bol {
			buf.WriteString(p.prefix)
			p.bol = true
		}
		buf.WriteByte(c)
		if c == '\n' {
			p.bol = false
		}
	}
	if _, err := p.w.Write(buf.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}
