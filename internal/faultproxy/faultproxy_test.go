package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// target is an echo server that also records, per accepted connection,
// what it received and how its read ended.
type target struct {
	ln net.Listener
	wg sync.WaitGroup

	mu    sync.Mutex
	conns []*targetConn
}

type targetConn struct {
	conn net.Conn
	mu   sync.Mutex
	got  []byte
	end  error // io.EOF for a FIN, an ECONNRESET error for an RST
	done chan struct{}
}

func (tc *targetConn) received() string {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return string(tc.got)
}

func (tc *targetConn) ended() (error, bool) {
	select {
	case <-tc.done:
		return tc.end, true
	default:
		return nil, false
	}
}

func newTarget(t *testing.T) *target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{ln: ln}
	tg.wg.Add(1)
	go func() {
		defer tg.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := &targetConn{conn: c, done: make(chan struct{})}
			tg.mu.Lock()
			tg.conns = append(tg.conns, tc)
			tg.mu.Unlock()
			tg.wg.Add(1)
			go func() {
				defer tg.wg.Done()
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						tc.mu.Lock()
						tc.got = append(tc.got, buf[:n]...)
						tc.mu.Unlock()
						if _, werr := c.Write(buf[:n]); werr != nil {
							tc.end = werr
							close(tc.done)
							return
						}
					}
					if err != nil {
						tc.end = err
						close(tc.done)
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		tg.mu.Lock()
		for _, tc := range tg.conns {
			tc.conn.Close()
		}
		tg.mu.Unlock()
		tg.wg.Wait()
	})
	return tg
}

func (tg *target) conn(t *testing.T, i int) *targetConn {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		tg.mu.Lock()
		if len(tg.conns) > i {
			tc := tg.conns[i]
			tg.mu.Unlock()
			return tc
		}
		tg.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("target connection %d never arrived", i)
		}
		time.Sleep(time.Millisecond)
	}
}

func newProxy(t *testing.T, tg *target) *Proxy {
	t.Helper()
	p, err := New(tg.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg and reads the echo, within d.
func roundTrip(c net.Conn, msg string, d time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return string(buf), err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// waitConns waits until the relay has n open connections.
func waitConns(t *testing.T, p *Proxy, n int) []*Conn {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		cs := p.Conns()
		if len(cs) == n {
			return cs
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay has %d connections, want %d", len(cs), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestForwards(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg)
	c := dial(t, p)
	for _, msg := range []string{"hello", strings.Repeat("x", 200_000)} {
		got, err := roundTrip(c, msg, 5*time.Second)
		if err != nil || got != msg {
			t.Fatalf("echo of %d bytes: %d bytes, %v", len(msg), len(got), err)
		}
	}
	cs := waitConns(t, p, 1)
	if cs[0].ID() != 1 || p.Accepted() != 1 {
		t.Errorf("ID %d, Accepted %d, want 1 and 1", cs[0].ID(), p.Accepted())
	}
	// The target sees the relay's upstream address as the client's.
	if got, want := tg.conn(t, 0).conn.RemoteAddr().String(), cs[0].UpstreamAddr().String(); got != want {
		t.Errorf("target sees %s, UpstreamAddr %s", got, want)
	}
	// A FIN from the client reaches the target, and the relay forgets the
	// connection once both sides closed.
	c.Close()
	select {
	case <-cs[0].Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the relayed connection did not end after the client closed")
	}
	end, _ := tg.conn(t, 0).ended()
	if !errors.Is(end, io.EOF) {
		t.Errorf("target read ended with %v, want EOF", end)
	}
}

func TestBlackholeHoldsThenHeals(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg)
	c := dial(t, p)
	if _, err := roundTrip(c, "warm", time.Second); err != nil {
		t.Fatal(err)
	}
	p.Blackhole()
	_, err := roundTrip(c, "lost?", 300*time.Millisecond)
	if !isTimeout(err) {
		t.Fatalf("round trip across a blackhole: %v, want a timeout", err)
	}
	tc := tg.conn(t, 0)
	if got := tc.received(); got != "warm" {
		t.Errorf("target received %q across the blackhole, want only %q", got, "warm")
	}
	// Silent: the client closing its side sends no FIN through.
	if cw, ok := c.(*net.TCPConn); ok {
		_ = cw.CloseWrite()
	}
	time.Sleep(100 * time.Millisecond)
	if end, ok := tc.ended(); ok {
		t.Fatalf("the target saw the end (%v) across a blackhole", end)
	}
	// Heal: the held bytes arrive, in order, then the FIN.
	p.Heal()
	select {
	case <-tc.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the target never saw the held FIN after Heal")
	}
	if got := tc.received(); got != "warmlost?" {
		t.Errorf("target received %q after Heal, want %q", got, "warmlost?")
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c)
	if err != nil || string(rest) != "lost?" {
		t.Errorf("client read %q, %v after Heal, want the held echo then EOF", rest, err)
	}
}

func TestBlackholeAppliesToNewConnections(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg)
	p.Blackhole()
	c := dial(t, p)
	if _, err := roundTrip(c, "x", 200*time.Millisecond); !isTimeout(err) {
		t.Fatalf("round trip on a connection made during a blackhole: %v, want a timeout", err)
	}
	p.Heal()
	buf := make([]byte, 1)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 'x' {
		t.Fatalf("after Heal: %q, %v", buf, err)
	}
}

func TestPerConnectionBlackhole(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg)
	a := dial(t, p)
	if _, err := roundTrip(a, "a", time.Second); err != nil {
		t.Fatal(err)
	}
	b := dial(t, p)
	if _, err := roundTrip(b, "b", time.Second); err != nil {
		t.Fatal(err)
	}
	cs := waitConns(t, p, 2)
	cs[0].Blackhole()
	if _, err := roundTrip(a, "a", 200*time.Millisecond); !isTimeout(err) {
		t.Errorf("blackholed connection: %v, want a timeout", err)
	}
	if _, err := roundTrip(b, "b", time.Second); err != nil {
		t.Errorf("the other connection: %v, want it unaffected", err)
	}
	cs[0].Heal()
}

func TestReset(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg)
	c := dial(t, p)
	if _, err := roundTrip(c, "x", time.Second); err != nil {
		t.Fatal(err)
	}
	tc := tg.conn(t, 0)
	p.Blackhole() // Reset cuts through a blackhole
	start := time.Now()
	p.Reset()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read after Reset: %v, want ECONNRESET", err)
	}
	select {
	case <-tc.done:
		if !errors.Is(tc.end, syscall.ECONNRESET) {
			t.Errorf("target read after Reset: %v, want ECONNRESET", tc.end)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the target never saw the reset")
	}
	t.Logf("both ends saw the reset %v after Reset", time.Since(start))
	if n := len(p.Conns()); n != 0 {
		t.Errorf("%d connections left after Reset", n)
	}
	// The relay still accepts (and the blackhole still applies to new ones).
	p.Heal()
	c2 := dial(t, p)
	if _, err := roundTrip(c2, "y", time.Second); err != nil {
		t.Errorf("new connection after Reset: %v", err)
	}
}

func TestConnClose(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg)
	c := dial(t, p)
	if _, err := roundTrip(c, "x", time.Second); err != nil {
		t.Fatal(err)
	}
	cs := waitConns(t, p, 1)
	cs[0].Blackhole()
	cs[0].Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("client read after Conn.Close: %v, want EOF", err)
	}
	tc := tg.conn(t, 0)
	select {
	case <-tc.done:
		if !errors.Is(tc.end, io.EOF) {
			t.Errorf("target read after Conn.Close: %v, want EOF", tc.end)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the target never saw the close")
	}
}

func TestLatency(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg)
	c := dial(t, p)
	if _, err := roundTrip(c, "x", time.Second); err != nil {
		t.Fatal(err)
	}
	// d is large beside what a busy machine adds, so that the bounds
	// below tell a delay from a throughput cap with seconds to spare.
	const d = time.Second
	p.Latency(d)
	start := time.Now()
	if _, err := roundTrip(c, "ping", time.Minute); err != nil {
		t.Fatal(err)
	}
	// A delay is never shorter than asked, however busy the machine.
	if rtt := time.Since(start); rtt < 2*d {
		t.Errorf("round trip with %v latency each way took %v", d, rtt)
	} else {
		t.Logf("round trip with %v latency each way: %v", d, rtt)
	}
	// Latency is a delay, not a throughput cap: chunks sent one after the
	// other arrive about 2d after they were sent, not n*d.
	const n = 10
	start = time.Now()
	for i := range n {
		if _, err := c.Write([]byte{byte('0' + i)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	buf := make([]byte, n)
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "0123456789" {
		t.Fatalf("pipelined echo %q, %v", buf, err)
	}
	el := time.Since(start)
	t.Logf("%d pipelined chunks with %v latency each way: %v", n, d, el)
	if el < 2*d || el >= n*d/2 {
		t.Errorf("%d pipelined chunks took %v with %v latency each way, want about %v (a cap would take over %v)", n, el, d, 2*d, n*d)
	}
	// Heal releases what the latency holds at once: with an hour of
	// latency, the echo arrives only because of Heal.
	p.Latency(time.Hour)
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	// Held: nothing comes back for a while (the relay has taken the
	// chunk in by then, unless the machine is very busy: then Heal comes
	// first and the check below is weaker, never wrong).
	got := make([]byte, 4)
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(got); !isTimeout(err) {
		t.Fatalf("read under an hour of latency: %q, %v; want nothing yet", got[:n], err)
	}
	p.Heal()
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "held" {
		t.Fatalf("after Heal, the chunk held by an hour of latency: %q, %v", got, err)
	}
	start = time.Now()
	if _, err := roundTrip(c, "fast", time.Minute); err != nil {
		t.Errorf("after Heal: %v", err)
	}
	t.Logf("round trip after Heal: %v", time.Since(start))
}

func TestCloseEndsEverything(t *testing.T) {
	tg := newTarget(t)
	p, err := New(tg.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, p)
	if _, err := roundTrip(c, "x", time.Second); err != nil {
		t.Fatal(err)
	}
	p.Blackhole()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bufio.NewReader(c).ReadByte(); err == nil || isTimeout(err) {
		t.Errorf("client read after Close: %v, want the connection closed", err)
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Error("the relay still accepts after Close")
	}
}

func TestDSN(t *testing.T) {
	p, err := New("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	dsn, err := p.DSN("root:pw@tcp(127.0.0.1:3306)/test?parseTime=true")
	if err != nil {
		t.Fatal(err)
	}
	if want := "root:pw@tcp(" + p.Addr() + ")/test?parseTime=true"; dsn != want {
		t.Errorf("DSN = %q, want %q", dsn, want)
	}
	if a, err := TargetOf("root@tcp(db:3307)/x"); err != nil || a != "db:3307" {
		t.Errorf("TargetOf = %q, %v", a, err)
	}
	if _, err := TargetOf("root@unix(/run/mysqld/mysqld.sock)/x"); err == nil {
		t.Error("TargetOf a unix socket DSN: no error")
	}
	if _, err := New("nonsense"); err == nil {
		t.Error("New(nonsense): no error")
	}
}
