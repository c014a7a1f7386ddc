// Package faultproxy is a small in-process TCP relay for fault injection in
// tests: clients connect to the relay, which forwards each connection to a
// target (a database server), and the test breaks the path between them.
//
//	p, err := faultproxy.New("127.0.0.1:3306")
//	defer p.Close()
//	dsn, _ := p.DSN("root@tcp(127.0.0.1:3306)/test") // the same DSN, via the relay
//	...
//	p.Blackhole() // a silent partition: nothing gets through, no FIN, no RST
//	p.Heal()      // what was held back is delivered, as TCP would after a partition
//	p.Reset()     // every connection ends with an RST on both sides
//	p.Latency(50 * time.Millisecond) // one-way delay, each direction
//
// The controls exist per connection too ([Conn]), and the relay's own apply
// to every connection it has and to those it accepts afterwards.
//
// A blackholed connection keeps its sockets open and stops delivering in
// both directions. Bytes (and a FIN or an RST from an end) that arrive
// meanwhile are held, in order, and delivered on Heal: like TCP, which
// retransmits once a partition heals, and unlike a relay that would drop
// them and so corrupt the stream.
package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
)

// A Proxy is a TCP relay on 127.0.0.1 to one target address.
type Proxy struct {
	ln     net.Listener
	target string
	dialer net.Dialer

	mu      sync.Mutex
	conns   map[*Conn]struct{}
	nextID  int
	fault   fault // applied to connections accepted from now on
	closed  bool
	accepts int

	wg sync.WaitGroup // the accept loop and every connection's goroutines
}

// fault is the state of a connection (or the relay's default for new ones).
type fault struct {
	blackhole bool
	latency   time.Duration
	cutAfter  []byte // see CutAfterClientSends
}

// New starts a relay listening on 127.0.0.1:0 that forwards each connection
// to target ("host:port").
func New(target string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("faultproxy: target %q: %w", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{
		ln:     ln,
		target: target,
		dialer: net.Dialer{Timeout: 5 * time.Second},
		conns:  make(map[*Conn]struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the relay's address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address the relay forwards to.
func (p *Proxy) Target() string { return p.target }

// DSN returns dsn (a go-sql-driver/mysql DSN) with its address replaced by
// the relay's, over TCP.
func (p *Proxy) DSN(dsn string) (string, error) {
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		return "", fmt.Errorf("faultproxy: %w", err)
	}
	cfg.Net = "tcp"
	cfg.Addr = p.Addr()
	return cfg.FormatDSN(), nil
}

// TargetOf returns the TCP address ("host:port") of a go-sql-driver/mysql
// DSN, or an error if the DSN does not use TCP (a unix socket cannot be
// relayed by this package).
func TargetOf(dsn string) (string, error) {
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		return "", fmt.Errorf("faultproxy: %w", err)
	}
	if cfg.Net != "tcp" && cfg.Net != "tcp4" && cfg.Net != "tcp6" {
		return "", fmt.Errorf("faultproxy: DSN uses %q, not tcp: cannot relay it", cfg.Net)
	}
	return cfg.Addr, nil
}

// Accepted returns how many connections the relay has accepted so far.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepts
}

// Conns returns the relay's open connections, in the order they were
// accepted.
func (p *Proxy) Conns() []*Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*Conn, 0, len(p.conns))
	for c := range p.conns {
		out = append(out, c)
	}
	// Small sets: insertion sort by id.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].id < out[j-1].id; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// Blackhole silently stops forwarding, in both directions, on every
// connection and on those accepted from now on, until Heal.
func (p *Proxy) Blackhole() {
	p.update(func(f *fault) { f.blackhole = true })
}

// Latency delays every chunk of bytes by d, in each direction, on every
// connection and on those accepted from now on. 0 removes the delay.
func (p *Proxy) Latency(d time.Duration) {
	p.update(func(f *fault) { f.latency = max(d, 0) })
}

// Heal removes blackholes, latency and cut rules from every connection and
// from the relay's defaults. Held bytes are delivered.
func (p *Proxy) Heal() {
	p.update(func(f *fault) { *f = fault{} })
}

func (p *Proxy) update(fn func(*fault)) {
	p.mu.Lock()
	fn(&p.fault)
	conns := make([]*Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.update(fn)
	}
}

// Reset ends every open connection with an RST on both sides (SO_LINGER 0).
// The relay keeps accepting new connections.
func (p *Proxy) Reset() {
	for _, c := range p.Conns() {
		c.Reset()
	}
}

// Close stops accepting, closes every connection (with an RST) and waits
// for the relay's goroutines to end. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	already := p.closed
	p.closed = true
	p.mu.Unlock()
	var err error
	if !already {
		err = p.ln.Close()
	}
	p.Reset()
	p.wg.Wait()
	return err
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		server, err := p.dialer.Dial("tcp", p.target)
		if err != nil {
			abort(client)
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			abort(client)
			abort(server)
			continue
		}
		p.nextID++
		p.accepts++
		c := &Conn{
			p:       p,
			id:      p.nextID,
			client:  client.(*net.TCPConn),
			server:  server.(*net.TCPConn),
			state:   p.fault,
			changed: make(chan struct{}),
			done:    make(chan struct{}),
		}
		p.conns[c] = struct{}{}
		p.wg.Add(4)
		p.mu.Unlock()
		c.start()
	}
}

// A Conn is one relayed connection: client <-> relay <-> target.
type Conn struct {
	p      *Proxy
	id     int
	client *net.TCPConn // accepted from the client
	server *net.TCPConn // dialled to the target

	mu      sync.Mutex
	state   fault
	changed chan struct{} // closed and replaced on every state change
	ended   bool
	cut     bool          // CutAfterClientSends fired: the target's bytes are dropped
	done    chan struct{} // closed when the connection is torn down
	pumps   int           // directions still running
}

// ID returns the connection's sequence number in its relay (1 for the first).
func (c *Conn) ID() int { return c.id }

// ClientAddr is the client's address, as the relay sees it.
func (c *Conn) ClientAddr() net.Addr { return c.client.RemoteAddr() }

// UpstreamAddr is the relay's local address on the connection to the
// target: what the server sees as the client ("127.0.0.1:port", the HOST
// column of MySQL's PROCESSLIST).
func (c *Conn) UpstreamAddr() net.Addr { return c.server.LocalAddr() }

// Blackhole silently stops forwarding on this connection, both ways.
func (c *Conn) Blackhole() { c.update(func(f *fault) { f.blackhole = true }) }

// Latency delays each chunk forwarded on this connection by d, each way.
func (c *Conn) Latency(d time.Duration) { c.update(func(f *fault) { f.latency = max(d, 0) }) }

// Heal removes this connection's blackhole, latency and cut rule.
func (c *Conn) Heal() { c.update(func(f *fault) { *f = fault{} }) }

// Reset closes both sides of the connection with an RST, at once, even if
// it is blackholed.
func (c *Conn) Reset() { c.teardown(true) }

// Close closes both sides of the connection normally (a FIN each way), at
// once, even if it is blackholed.
func (c *Conn) Close() { c.teardown(false) }

// Done is closed when the connection has been torn down.
func (c *Conn) Done() <-chan struct{} { return c.done }

func (c *Conn) update(fn func(*fault)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fn(&c.state)
	close(c.changed)
	c.changed = make(chan struct{})
}

// snapshot returns the current state and a channel closed on its next change.
func (c *Conn) snapshot() (fault, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state, c.changed
}

// item is what a pump's reader hands its writer: bytes, or the end of the
// stream (a FIN, or an RST when reset is set).
type item struct {
	data  []byte
	at    time.Time // when it was read
	eof   bool
	reset bool
}

// pipeDepth bounds the chunks held per direction (a blackholed direction
// stops reading once it is full, so the sender's socket buffers fill, as
// they would in a real partition).
const pipeDepth = 256

func (c *Conn) start() {
	c.pumps = 2
	up := make(chan item, pipeDepth)
	down := make(chan item, pipeDepth)
	go c.read(c.client, up)
	go c.write(c.server, up)
	go c.read(c.server, down)
	go c.write(c.client, down)
}

// read reads src into ch until src ends.
func (c *Conn) read(src *net.TCPConn, ch chan<- item) {
	defer c.p.wg.Done()
	defer close(ch)
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case ch <- item{data: buf[:n], at: time.Now()}:
			case <-c.done:
				return
			}
		}
		if err != nil {
			it := item{eof: true, at: time.Now()}
			if !errors.Is(err, io.EOF) {
				it.reset = true
			}
			select {
			case ch <- it:
			case <-c.done:
			}
			return
		}
	}
}

// write delivers what ch carries to dst, honouring the connection's faults.
func (c *Conn) write(dst *net.TCPConn, ch <-chan item) {
	defer c.p.wg.Done()
	for {
		var it item
		var ok bool
		select {
		case it, ok = <-ch:
		case <-c.done:
			return
		}
		if !ok {
			return
		}
		if !c.await(it.at) {
			return
		}
		switch {
		case it.reset:
			c.teardown(true)
			return
		case it.eof:
			_ = dst.CloseWrite()
			c.pumpDone()
			return
		}
		switch c.intercept(dst, it.data) {
		case drop:
			continue
		case stop:
			return
		}
		if _, err := dst.Write(it.data); err != nil {
			c.teardown(true)
			return
		}
	}
}

// await waits until an item read at `at` may be delivered: the connection
// is not blackholed and its latency has passed. It returns false when the
// connection is torn down meanwhile.
func (c *Conn) await(at time.Time) bool {
	for {
		st, changed := c.snapshot()
		if st.blackhole {
			select {
			case <-changed:
				continue
			case <-c.done:
				return false
			}
		}
		wait := time.Until(at.Add(st.latency))
		if wait <= 0 {
			return true
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
			// Check the state again: it may have become a blackhole.
		case <-changed:
			t.Stop()
		case <-c.done:
			t.Stop()
			return false
		}
	}
}

// pumpDone records that one direction ended with a FIN; when both have, the
// connection is closed normally.
func (c *Conn) pumpDone() {
	c.mu.Lock()
	c.pumps--
	last := c.pumps == 0
	c.mu.Unlock()
	if last {
		c.teardown(false)
	}
}

// teardown closes both sockets (with an RST when rst is set) once, and
// forgets the connection.
func (c *Conn) teardown(rst bool) {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.ended = true
	close(c.done)
	c.mu.Unlock()
	if rst {
		abort(c.client)
		abort(c.server)
	} else {
		_ = c.client.Close()
		_ = c.server.Close()
	}
	c.p.mu.Lock()
	delete(c.p.conns, c)
	c.p.mu.Unlock()
}

// abort closes conn with an RST instead of a FIN.
func abort(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}
