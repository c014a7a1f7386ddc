package hatest

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// A Relay is a TCP relay on 127.0.0.1 whose target can be switched: what a
// service sees behind a proxy or a floating address during a failover.
// Switch resets every relayed connection (the old primary's sessions end,
// as they would on a VIP move) and sends new connections to the new target.
type Relay struct {
	ln net.Listener

	mu     sync.Mutex
	target string
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// StartRelay starts a relay to target and closes it when t ends.
func StartRelay(t testing.TB, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("hatest: relay: %v", err)
	}
	r := &Relay{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(r.Close)
	return r
}

// Addr returns the relay's address.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// DSN returns a DSN of database test through the relay.
func (r *Relay) DSN(user, password string) string {
	cred := user
	if password != "" {
		cred += ":" + password
	}
	return cred + "@tcp(" + r.Addr() + ")/test?parseTime=true"
}

// Target returns the current target.
func (r *Relay) Target() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.target
}

// Switch sends new connections to target and resets the open ones.
func (r *Relay) Switch(target string) {
	r.mu.Lock()
	r.target = target
	conns := r.conns
	r.conns = map[net.Conn]struct{}{}
	r.mu.Unlock()
	for c := range conns {
		resetConn(c)
	}
}

// Close stops the relay and resets every connection.
func (r *Relay) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	conns := r.conns
	r.conns = map[net.Conn]struct{}{}
	r.mu.Unlock()
	_ = r.ln.Close()
	for c := range conns {
		resetConn(c)
	}
	r.wg.Wait()
}

func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		r.wg.Add(1)
		go r.serve(c)
	}
}

func (r *Relay) serve(client net.Conn) {
	defer r.wg.Done()
	target := r.Target()
	up, err := net.Dial("tcp", target)
	if err != nil {
		resetConn(client)
		return
	}
	r.mu.Lock()
	if r.closed || r.target != target {
		r.mu.Unlock()
		resetConn(client)
		resetConn(up)
		return
	}
	r.conns[client] = struct{}{}
	r.conns[up] = struct{}{}
	r.mu.Unlock()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(up, client)
	go pipe(client, up)
	<-done
	resetConn(client)
	resetConn(up)
	<-done
	r.mu.Lock()
	delete(r.conns, client)
	delete(r.conns, up)
	r.mu.Unlock()
}
