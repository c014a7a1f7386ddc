package dblock

import (
	"container/list"
	"sync"
)

// lru is a map bounded by a least-recently-used policy. It is safe for
// concurrent use. The Locker keeps two: key to row id, and connection to
// the lease it set on its session.
type lru[K comparable, V comparable] struct {
	mu    sync.Mutex
	max   int
	ll    *list.List // front = most recently used; values are *lruEntry
	items map[K]*list.Element
}

type lruEntry[K comparable, V comparable] struct {
	key K
	val V
}

func newLRU[K comparable, V comparable](max int) *lru[K, V] {
	return &lru[K, V]{max: max, ll: list.New(), items: make(map[K]*list.Element)}
}

func (c *lru[K, V]) get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*lruEntry[K, V]).val, true
	}
	var zero V
	return zero, false
}

func (c *lru[K, V]) put(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		e.Value.(*lruEntry[K, V]).val = v
		c.ll.MoveToFront(e)
		return
	}
	c.items[k] = c.ll.PushFront(&lruEntry[K, V]{key: k, val: v})
	for c.ll.Len() > c.max {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.items, last.Value.(*lruEntry[K, V]).key)
	}
}

// forget drops k if it still maps to v (a key row that was collected).
func (c *lru[K, V]) forget(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok && e.Value.(*lruEntry[K, V]).val == v {
		c.ll.Remove(e)
		delete(c.items, k)
	}
}

// clear drops every entry (the table was dropped: its ids mean nothing).
func (c *lru[K, V]) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ll.Init()
	clear(c.items)
}

func (c *lru[K, V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
