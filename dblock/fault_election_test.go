package dblock_test

// Elections under faults: leaders killed with SIGKILL in child processes,
// a leader cut off silently by the fault relay, and a leadership kept
// through idle periods many times its lease.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// electionChild campaigns for the key named by the environment with the
// value $TXLOCK_FAULT_ARG, prints "LEADER <token>" once it leads and sleeps
// until it is killed (at most a minute).
func electionChild(t *testing.T) {
	l, key := faultChildLocker(t)
	defer l.Close()
	value := os.Getenv(envFaultArg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ld, err := l.Election(dblock.Resource(key)).Campaign(ctx, value)
	if err != nil {
		t.Fatalf("child Campaign: %v", err)
	}
	defer rb(ld)
	fmt.Println("LEADER " + strconv.FormatInt(ld.Token(), 10))
	select {
	case <-ctx.Done():
	case <-ld.Done():
		t.Fatalf("child lost its leadership: %v", ld.Err())
	}
}

// childLine is a line of one of several children.
type childLine struct {
	child int
	line  string
}

// mergeLines forwards the lines of children to one channel.
func mergeLines(children []*child) <-chan childLine {
	out := make(chan childLine, 64)
	for i, c := range children {
		go func() {
			for line := range c.lines {
				out <- childLine{i, line}
			}
		}()
	}
	return out
}

// nextLeader waits for a child's "LEADER <token>" line.
func nextLeader(t *testing.T, lines <-chan childLine, children []*child) (int, int64) {
	t.Helper()
	timer := time.NewTimer(opTimeout)
	defer timer.Stop()
	for {
		select {
		case cl := <-lines:
			if rest, ok := strings.CutPrefix(cl.line, "LEADER "); ok {
				token, err := strconv.ParseInt(rest, 10, 64)
				if err != nil {
					t.Fatalf("child %d: %q", cl.child, cl.line)
				}
				return cl.child, token
			}
		case <-timer.C:
			var out strings.Builder
			for i, c := range children {
				fmt.Fprintf(&out, "child %d:\n%s\n", i, c.output())
			}
			t.Fatalf("no child led within %v:\n%s", opTimeout, out.String())
		}
	}
}

// TestElectionKillLeaderProcess: three processes campaign; the leader is
// killed with SIGKILL, twice: each time a follower leads within
// milliseconds (the server frees the dead session's named lock), and
// an observer sees each leader once, in order.
func TestElectionKillLeaderProcess(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	const key = "election:kill"
	obs := l.Election(dblock.Resource(key)).Observe(ctx)
	children := make([]*child, 3)
	for i := range children {
		children[i] = startChild(t, "campaign", envFaultTable+"="+e.table, envFaultKey+"="+key, envFaultArg+"="+fmt.Sprintf("p%d", i))
	}
	lines := mergeLines(children)
	leader, token := nextLeader(t, lines, children)
	if got, want := nextValue(t, obs), fmt.Sprintf("p%d", leader); got != want {
		t.Fatalf("observed %q, want the leader %q", got, want)
	}
	order := []string{fmt.Sprintf("p%d", leader)}
	var led, observed []time.Duration
	for range len(children) - 1 {
		killed := children[leader].kill(t)
		next, nextToken := nextLeader(t, lines, children)
		led = append(led, time.Since(killed))
		want := fmt.Sprintf("p%d", next)
		if got := nextValue(t, obs); got != want {
			t.Fatalf("observed %q after the kill, the child that leads is %q", got, want)
		}
		observed = append(observed, time.Since(killed))
		if nextToken <= token {
			t.Fatalf("token %d after the kill, not above %d", nextToken, token)
		}
		children[leader].reap(t, opTimeout)
		leader, token = next, nextToken
		order = append(order, want)
	}
	t.Logf("leaders in order: %v; SIGKILL of the leader to the next one's LEADER line: %v, to the observer's delivery: %v", order, roundMs(led), roundMs(observed))
}

// TestElectionPartitionedLeader: the leader's connection goes silent (the
// relay drops everything). Its Done is closed at the lease minus the
// margin, before the server ends its idle session at the lease (which
// frees the named lock): the
// follower that then leads finds the old leader's Done already closed.
func TestElectionPartitionedLeader(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	p, relayed := faultRelay(t)
	const lease = 2 * time.Second
	la := faultLocker(t, relayed, e.table, dblock.Defaults(dblock.Lease(lease)))
	lb := e.locker(t, dblock.Defaults(dblock.Lease(lease)))
	t.Cleanup(func() { _ = lb.Close() })
	key := dblock.Resource("election:partition")

	a := mustCampaign(t, ctx, la.Election(key), "a")
	type won struct {
		campaignResult
		oldDone bool // a's Done was closed when b's Campaign returned
	}
	bWon := make(chan won, 1)
	go func() {
		ld, err := lb.Election(key).Campaign(ctx, "b")
		bWon <- won{campaignResult{ld, err, time.Now()}, isClosed(a.Done())}
	}()
	waitForNamedLockWaits(t, e.sqlDB, electionLock(t, e, key), 1)
	cut := time.Now()
	p.Blackhole()
	doneAt, ok := closedWithin(a.Done(), opTimeout)
	if !ok {
		t.Fatal("a's Done not closed after its connection went silent")
	}
	if !errors.Is(a.Err(), dblock.ErrLockLost) {
		t.Fatalf("a's Err = %v, want ErrLockLost", a.Err())
	}
	var r won
	select {
	case r = <-bWon:
	case <-time.After(opTimeout):
		t.Fatal("b did not lead after a's lease")
	}
	if r.err != nil {
		t.Fatalf("b's Campaign: %v", r.err)
	}
	defer rb(r.ld)
	if !r.oldDone {
		t.Fatal("b led while a's Done was still open: two leaders")
	}
	if r.ld.Token() <= a.Token() {
		t.Fatalf("b's token %d not above a's %d", r.ld.Token(), a.Token())
	}
	wantLeader(t, ctx, lb.Election(key), "b")
	t.Logf("lease %v: silence to a's Done %v, to b's leadership %v (a's Done first, by %v)",
		lease, doneAt.Sub(cut).Round(time.Millisecond), r.at.Sub(cut).Round(time.Millisecond), r.at.Sub(doneAt).Round(time.Millisecond))
}

// TestElectionIdleLease: an idle leader keeps its leadership through five
// times its lease (the keepalive pings its connection), and others see
// it lead all along.
func TestElectionIdleLease(t *testing.T) {
	e, _, ctx, el := setupElection(t, "election:idle", dblock.Defaults(dblock.Lease(time.Second)))
	name := electionLock(t, e, dblock.Resource("election:idle"))
	ld := mustCampaign(t, ctx, el, "idle")
	const idle = 5 * time.Second
	start := time.Now()
	timer := time.NewTimer(idle)
	defer timer.Stop()
	select {
	case <-ld.Done():
		t.Fatalf("the idle leadership ended after %v: %v", time.Since(start), ld.Err())
	case <-timer.C:
	}
	wantLeader(t, ctx, el, "idle")
	if namedLockHolder(t, e.sqlDB, name) == 0 {
		t.Fatal("nobody holds the named lock of the idle leadership")
	}
	t.Logf("idle for %v (%d leases of 1 s): still leading", idle, int(idle/time.Second))
}
