package main

// checkPermits refuses two methods whose directives write the same key
// with different permits=N: a key's semaphore has one number of permits,
// set by its first user, and every call of the other method would fail
// with dblock.ErrPermits. Only keys written alike are compared (a key
// function's, or a bare method term's, differ by method or are unknown).
func (g *generator) checkPermits() {
	first := map[string]*method{} // by key text, the first method with permits
	for _, m := range g.methods {
		s := m.lock
		if s == nil || s.permits == 0 || s.keyFunc != "" || s.method && s.methodArg == "" {
			continue
		}
		f, ok := first[s.keyText]
		if !ok {
			first[s.keyText] = m
			continue
		}
		if f.lock.permits != s.permits {
			g.errAt(s.pos, "permits=%d on %s, but permits=%d on %s (line %d) for the same key %s: a key's semaphore has one number of permits, "+
				"and every call of one of them would fail with dblock.ErrPermits; give both the same permits=N",
				s.permits, m.name, f.lock.permits, f.name, f.lock.pos.Line, s.keyText)
		}
	}
}
