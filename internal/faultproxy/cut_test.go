package faultproxy

import (
	"errors"
	"io"
	"syscall"
	"testing"
	"time"
)

// TestCutAfterClientSends: the chunk that contains the pattern reaches the
// target whole, followed by a FIN; the client never gets the target's
// answer (the echo) and its connection is reset. Chunks before it pass,
// and the rule applies to connections accepted later too.
func TestCutAfterClientSends(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg)
	c := dial(t, p)
	if _, err := roundTrip(c, "before", time.Second); err != nil {
		t.Fatal(err)
	}
	p.CutAfterClientSends([]byte("COMMIT"))
	if got, err := roundTrip(c, "no match", time.Second); err != nil || got != "no match" {
		t.Fatalf("a chunk without the pattern: %q, %v", got, err)
	}
	cs := waitConns(t, p, 1)
	tc := tg.conn(t, 0)

	_, err := roundTrip(c, "\x03COMMIT", 5*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
		t.Errorf("client after the cut: %v, want the connection reset (ECONNRESET)", err)
	}
	select {
	case <-tc.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the target never saw the end of the connection")
	}
	if !errors.Is(tc.end, io.EOF) {
		t.Errorf("target read ended with %v, want EOF (a FIN after the request)", tc.end)
	}
	if got, want := tc.received(), "beforeno match\x03COMMIT"; got != want {
		t.Errorf("target received %q, want %q", got, want)
	}
	if !cs[0].Cut() {
		t.Error("Cut() = false after the cut")
	}
	select {
	case <-cs[0].Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the relayed connection was not torn down after the cut")
	}

	// A connection accepted later is cut too; after Heal, nothing is.
	c2 := dial(t, p)
	if _, err := roundTrip(c2, "x COMMIT y", 5*time.Second); err == nil {
		t.Error("a connection accepted after CutAfterClientSends was not cut")
	}
	p.Heal()
	c3 := dial(t, p)
	if got, err := roundTrip(c3, "COMMIT", time.Second); err != nil || got != "COMMIT" {
		t.Errorf("after Heal: %q, %v; want the echo", got, err)
	}
}

// TestConnCutAfterClientSends: the rule set on one connection cuts only
// that one, and a nil pattern removes it.
func TestConnCutAfterClientSends(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg)
	a, b := dial(t, p), dial(t, p)
	if _, err := roundTrip(a, "a", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(b, "b", time.Second); err != nil {
		t.Fatal(err)
	}
	cs := waitConns(t, p, 2)
	var ca *Conn
	for _, c := range cs {
		if c.ClientAddr().String() == a.LocalAddr().String() {
			ca = c
		}
	}
	if ca == nil {
		t.Fatal("the relay has no connection from the first client")
	}
	ca.CutAfterClientSends([]byte("STOP"))
	ca.CutAfterClientSends(nil)
	if got, err := roundTrip(a, "STOP", time.Second); err != nil || got != "STOP" {
		t.Fatalf("after the rule was removed: %q, %v", got, err)
	}
	ca.CutAfterClientSends([]byte("STOP"))
	if got, err := roundTrip(b, "STOP", time.Second); err != nil || got != "STOP" {
		t.Errorf("the other connection: %q, %v; want the echo", got, err)
	}
	if _, err := roundTrip(a, "STOP", 5*time.Second); err == nil {
		t.Error("the connection with the rule was not cut")
	}
}
