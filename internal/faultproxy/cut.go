package faultproxy

import (
	"bytes"
	"net"
	"slices"
)

// CutAfterClientSends makes every connection, and those accepted from now
// on, end right after it forwards to the target a chunk of client bytes
// that contains pattern: the target gets that chunk followed by a FIN (so
// it reads and runs the request whole), the client gets nothing of what the
// target sends from then on (its answer) and its connection is reset. It is
// a connection lost after a request was sent and before its answer came
// back: a COMMIT whose outcome the client cannot know. The rule fires once
// per connection. A nil or empty pattern removes it; so does Heal.
//
// The pattern is looked for in each chunk the relay reads from the client,
// not across chunks: a small request sent in one write (a MySQL COM_QUERY
// packet, "\x03COMMIT") arrives in one chunk.
func (p *Proxy) CutAfterClientSends(pattern []byte) {
	pattern = slices.Clone(pattern)
	p.update(func(f *fault) { f.cutAfter = pattern })
}

// CutAfterClientSends is Proxy.CutAfterClientSends for this connection only.
func (c *Conn) CutAfterClientSends(pattern []byte) {
	pattern = slices.Clone(pattern)
	c.update(func(f *fault) { f.cutAfter = pattern })
}

// Cut reports whether the connection was cut by CutAfterClientSends.
func (c *Conn) Cut() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cut
}

// verdict is what a pump does with a chunk: deliver it, drop it, or stop
// (intercept delivered it and ended the direction).
type verdict uint8

const (
	deliver verdict = iota
	drop
	stop
)

// intercept applies the cut rule to a chunk about to be written to dst.
func (c *Conn) intercept(dst *net.TCPConn, data []byte) verdict {
	c.mu.Lock()
	if dst == c.client {
		defer c.mu.Unlock()
		if c.cut {
			return drop // the target's answer, after the cut
		}
		return deliver
	}
	pattern := c.state.cutAfter
	if c.cut || len(pattern) == 0 || !bytes.Contains(data, pattern) {
		c.mu.Unlock()
		return deliver
	}
	// Set before the target can answer: its answer is dropped.
	c.cut = true
	c.mu.Unlock()
	if _, err := dst.Write(data); err != nil {
		c.teardown(true)
		return stop
	}
	// A FIN after the request, not an RST: the target reads the request
	// whole (an RST could discard it unread). The client is reset now; the
	// connection ends when the target closes its side.
	_ = c.server.CloseWrite()
	abort(c.client)
	c.pumpDone()
	return stop
}
