package main

import (
	"fmt"
	"go/types"
	"strings"
)

// The names of generated code: the package-level names the generated file
// declares, the locals of its methods, and the names of their parameters.
// Generated code must build whatever names the package and the interface
// use, so a parameter or a local never takes a name that the package, the
// generated file or its imports declare, or a predeclared identifier.

// locals are the names a generated method declares besides its
// parameters.
type locals struct {
	recv string // the proxy's receiver
	ctx  string // the context parameter, and the closure's
	res  string // the results of a method with several, and the closure's
	err  string // the error beside them, and the key method's
	key  string // the lock key
}

// predeclaredUsed are the predeclared identifiers generated code refers
// to: a package that declares one of them cannot have a proxy.
var predeclaredUsed = [...]string{"error", "false", "int64", "nil", "string", "true", "uint64"}

// checkNames reports names the generated code would declare that the
// package or the interface already uses, and predeclared identifiers the
// generated code needs that the package declares.
func (g *generator) checkNames() {
	scope := g.pkg.Types.Scope()
	g.declared = map[string]bool{}
	names := []string{g.proxy, g.proxy + "Inner", "New" + g.proxy}
	for _, m := range g.methods {
		if m.lock != nil && m.lock.hasOptions() {
			names = append(names, g.optsVar(m))
		}
	}
	for _, n := range names {
		g.declared[n] = true
		if obj := scope.Lookup(n); obj != nil {
			g.errorf(obj.Pos(), "%s is already declared in package %s: the proxy for %s needs the name (choose another with -name)", n, g.pkg.Name, g.iface)
		}
	}
	for _, n := range predeclaredUsed {
		if obj := scope.Lookup(n); obj != nil {
			g.errorf(obj.Pos(), "package %s declares %s, which the generated proxy uses as Go's predeclared %s: rename the package's %s", g.pkg.Name, n, n, n)
		}
	}
	methods := map[string]bool{}
	for _, m := range g.methods {
		methods[m.name] = true
	}
	for _, m := range g.methods {
		if m.name == "inner" || m.name == "locker" || (m.lock != nil && methods[keyMethod(m)]) {
			g.errorf(m.fn.Pos(), "method %s clashes with a name of the generated proxy", m.name)
		}
	}
}

func (g *generator) optsVar(m *method) string {
	return strings.ToLower(g.proxy[:1]) + g.proxy[1:] + "Opts" + m.name
}

func keyMethod(m *method) string { return "lockKey" + m.name }

// taken reports whether name cannot be a parameter or a local of generated
// code: the package or the generated file declares it, it is (or may
// become) the name of an import, or it is predeclared. A parameter named
// after a type of the package (Receipt), a key function it calls or an
// import would hide what the generated method body refers to.
func (g *generator) taken(name string) bool {
	return g.pkg.Types.Scope().Lookup(name) != nil || g.declared[name] || g.imports.isName(name) ||
		types.Universe.Lookup(name) != nil
}

// free returns name, or name followed by underscores, the first that is
// not taken and not in used.
func (g *generator) free(name string, used map[string]bool) string {
	for g.taken(name) || used[name] {
		name += "_"
	}
	return name
}

// chooseLocals names the locals p, ctx, res, err and key, or those names
// followed by underscores when the package declares them.
func (g *generator) chooseLocals() {
	used := map[string]bool{}
	pick := func(n string) string {
		n = g.free(n, used)
		used[n] = true
		return n
	}
	g.locals = locals{recv: pick("p"), ctx: pick("ctx"), res: pick("res"), err: pick("err"), key: pick("key")}
}

// nameParams gives the parameters names that are valid in generated code:
// the interface's, unless taken (see taken) or a local's, else aN. The
// first parameter, when a context, is the local ctx.
func (g *generator) nameParams(m *method) {
	l := g.locals
	used := map[string]bool{l.recv: true, l.ctx: true, l.res: true, l.err: true, l.key: true}
	for i := range m.params {
		p := &m.params[i]
		switch {
		case i == 0 && isContext(p.t):
			p.name = l.ctx
		case p.source != "" && p.source != "_" && !used[p.source] && !g.taken(p.source):
			p.name = p.source
			used[p.name] = true
		}
	}
	for i := range m.params {
		if p := &m.params[i]; p.name == "" {
			p.name = g.free(fmt.Sprintf("a%d", i), used)
			used[p.name] = true
		}
	}
}
