package main

import (
	"fmt"
	"go/types"
	"strconv"
	"strings"
)

// A keyPlan is the body of a locked method's key method, which returns
// the key, or the error that says which value it cannot be computed from.
type keyPlan struct {
	stmts []string // statements before the return
	ret   string   // the returned dblock.Key expression
	fails bool     // whether a statement returns an error
}

// planKey computes how the key of the locked method m is built, recording
// an error at the directive when it cannot be.
func (g *generator) planKey(m *method) *keyPlan {
	s := m.lock
	if s.keyFunc != "" {
		return g.planKeyFunc(m)
	}
	kp := &keyPlan{}
	b := &keyBuilder{g: g, m: m, kp: kp, guarded: map[string]bool{}}
	var fields []string
	if s.resource != nil {
		v, ok := b.template("resource", s.resource)
		if !ok {
			return nil
		}
		fields = append(fields, "Resource: "+v)
	}
	if s.operation != "" {
		fields = append(fields, "Operation: "+strconv.Quote(s.operation))
	}
	if s.method {
		name := s.methodArg
		if name == "" {
			name = g.iface + "." + m.name
		}
		fields = append(fields, "Method: "+strconv.Quote(name))
	}
	switch {
	case s.userCtx:
		v := b.newVar()
		kp.stmts = append(kp.stmts, fmt.Sprintf("%s, _ := %s.UserFrom(%s)", v, g.ref(decoratorPath), m.params[0].name),
			b.failIf(v+` == ""`, "user: ctx carries no user: put it there with decorator.ContextWithUser"))
		fields = append(fields, "User: "+v)
	case s.user != nil:
		v, ok := b.template("user", s.user)
		if !ok {
			return nil
		}
		fields = append(fields, "User: "+v)
	}
	if s.global {
		fields = append(fields, "Global: true")
	}
	kp.ret = g.ref(dblockPath) + ".Key{" + strings.Join(fields, ", ") + "}"
	return kp
}

// planKeyFunc checks the key=FUNC function and calls it.
func (g *generator) planKeyFunc(m *method) *keyPlan {
	s := m.lock
	want := g.wantKeySig(m)
	// The function is the one of the package that declares the method
	// (an embedded interface may come from another package).
	pkg := m.fn.Pkg()
	obj := pkg.Scope().Lookup(s.keyFunc)
	fn, ok := obj.(*types.Func)
	if !ok {
		if obj == nil {
			g.errAt(s.pos, "key=%s: no function %s in package %s; want %s", s.keyFunc, s.keyFunc, pkg.Name(), want)
		} else {
			g.errAt(s.pos, "key=%s: %s is not a function; want %s", s.keyFunc, s.keyFunc, want)
		}
		return nil
	}
	name := s.keyFunc
	if pkg != g.pkg.Types {
		if !fn.Exported() {
			g.errAt(s.pos, "key=%s: %s is not exported by package %s, which declares %s, so the proxy in package %s cannot call it: export it, or use key terms",
				s.keyFunc, s.keyFunc, pkg.Path(), m.name, g.pkg.Name)
			return nil
		}
		name = g.imports.qualifier(pkg) + "." + name
	}
	sig := fn.Type().(*types.Signature)
	ok = sig.Params().Len() == m.sig.Params().Len() && sig.Variadic() == m.sig.Variadic() &&
		sig.Results().Len() == 1 && isDblockKey(sig.Results().At(0).Type()) && sig.TypeParams().Len() == 0
	for i := 0; ok && i < sig.Params().Len(); i++ {
		ok = types.Identical(sig.Params().At(i).Type(), m.sig.Params().At(i).Type())
	}
	if !ok {
		got := types.TypeString(sig, g.shortQualifier)
		g.errAt(s.pos, "key=%s: %s is func%s; want %s", s.keyFunc, s.keyFunc, strings.TrimPrefix(got, "func"), want)
		return nil
	}
	args := make([]string, len(m.params))
	for i, p := range m.params {
		args[i] = p.name
	}
	call := name + "(" + strings.Join(args, ", ")
	if m.sig.Variadic() {
		call += "..."
	}
	b := &keyBuilder{g: g, m: m}
	v := b.newVar()
	return &keyPlan{
		stmts: []string{v + " := " + call + ")", b.failIf(v+".IsZero()", s.keyFunc+" returned the zero dblock.Key")},
		ret:   v,
		fails: true,
	}
}

// wantKeySig renders the signature a key function of m must have.
func (g *generator) wantKeySig(m *method) string {
	var ps []string
	for i := range m.sig.Params().Len() {
		t := m.sig.Params().At(i).Type()
		if m.sig.Variadic() && i == m.sig.Params().Len()-1 {
			ps = append(ps, "..."+types.TypeString(t.(*types.Slice).Elem(), g.shortQualifier))
			continue
		}
		ps = append(ps, types.TypeString(t, g.shortQualifier))
	}
	return "func(" + strings.Join(ps, ", ") + ") dblock.Key"
}

func isDblockKey(t types.Type) bool {
	n, ok := types.Unalias(t).(*types.Named)
	return ok && n.Obj().Pkg() != nil && n.Obj().Pkg().Path() == dblockPath && n.Obj().Name() == "Key"
}

// keyBuilder emits the statements that compute the values of a key.
type keyBuilder struct {
	g       *generator
	m       *method
	kp      *keyPlan
	n       int
	guarded map[string]bool
	term    string // the key term being built, for messages: resource, user
}

// A guard is a value on a path that must not be nil: cond is the Go test,
// where the value as the directive's author knows it ("req.From").
type guard struct{ cond, where string }

func (b *keyBuilder) newVar() string {
	v := fmt.Sprintf("v%d", b.n)
	b.n++
	for b.clashes(v) {
		v += "_"
	}
	return v
}

func (b *keyBuilder) clashes(name string) bool {
	if b.g.imports.isName(name) {
		return true
	}
	for _, p := range b.m.params {
		if p.name == name {
			return true
		}
	}
	return false
}

// failIf returns the statement that, when cond holds, returns the zero
// key and an error wrapping dblock.ErrInvalidKey that says why, after the
// method's name: "Service.Refund: dblock: invalid key: resource:
// req.OrderID is empty". why is made of identifiers and plain words.
func (b *keyBuilder) failIf(cond, why string) string {
	if b.kp != nil {
		b.kp.fails = true
	}
	format := strconv.Quote(b.g.iface + "." + b.m.name + ": %w: " + why)
	dblock := b.g.ref(dblockPath)
	return fmt.Sprintf("if %s {\nreturn %s.Key{}, %s.Errorf(%s, %s.ErrInvalidKey)\n}", cond, dblock, b.g.ref("fmt"), format, dblock)
}

// template emits the values of t's placeholders and returns the
// expression that concatenates them with its literal text.
func (b *keyBuilder) template(term string, t *template) (string, bool) {
	b.term = term
	var parts []string
	for _, p := range t.parts {
		if p.path == nil {
			parts = append(parts, strconv.Quote(p.lit))
			continue
		}
		v, err := b.path(p.path)
		if err != nil {
			b.g.errAt(b.m.lock.pos, "%s=%s: %s cannot compute the key: %v", term, t.text, b.m.name, err)
			return "", false
		}
		parts = append(parts, v)
	}
	return strings.Join(parts, " + "), true
}

// path emits the statements that compute the string value of a path and
// returns the variable that holds it.
func (b *keyBuilder) path(path []string) (string, error) {
	m := b.m
	start := -1
	for i := 1; i < len(m.params); i++ {
		if m.params[i].source == path[0] {
			start, path = i, path[1:]
			break
		}
	}
	if start < 0 {
		if len(m.params) < 2 {
			return "", fmt.Errorf("%s has no parameter %s, and no request parameter after ctx whose field it could be", m.name, path[0])
		}
		start = 1
	}
	if m.sig.Variadic() && start == len(m.params)-1 && len(path) > 0 {
		return "", fmt.Errorf("%s is variadic: a key cannot be taken from the fields of ...%s", m.params[start].name, b.g.typeString(m.params[start].t.(*types.Slice).Elem()))
	}
	expr, desc := m.params[start].name, m.params[start].source
	if desc == "" || desc == "_" {
		desc = fmt.Sprintf("parameter %d", start)
	}
	where := desc // expr as the directive's author knows it, with the embedded fields walked
	t := m.params[start].t
	addressable := true
	var guards []guard
	guardNil := func() {
		if isNillable(t) && !b.guarded[expr] {
			guards = append(guards, guard{expr + " == nil", where})
			b.guarded[expr] = true
		}
	}
	for _, seg := range path {
		obj, index, _ := types.LookupFieldOrMethod(t, addressable, b.g.pkg.Types, seg)
		if obj == nil {
			if o, _, _ := types.LookupFieldOrMethod(t, true, b.g.pkg.Types, seg); o != nil {
				return "", fmt.Errorf("%s.%s has a pointer receiver, and %s is not addressable", desc, seg, desc)
			}
			return "", fmt.Errorf("%s (%s) has no field or method %s", desc, b.g.typeString(t), seg)
		}
		guardNil()
		// Walk embedded fields explicitly, to guard embedded pointers.
		cur := t
		for _, idx := range index[:len(index)-1] {
			st, ok := derefStruct(cur)
			if !ok {
				break
			}
			f := st.Field(idx)
			expr, where, cur = expr+"."+f.Name(), where+"."+f.Name(), f.Type()
			t = cur
			guardNil()
		}
		desc += "." + seg
		switch o := obj.(type) {
		case *types.Var:
			_, viaPtr := cur.Underlying().(*types.Pointer)
			expr, where, t, addressable = expr+"."+seg, where+"."+seg, o.Type(), addressable || viaPtr
		case *types.Func:
			sig := o.Type().(*types.Signature)
			if sig.Params().Len() != 0 || sig.Results().Len() != 1 {
				return "", fmt.Errorf("%s is a method with parameters or not exactly one result; want a field or a method without arguments returning one value", desc)
			}
			expr, where, t, addressable = expr+"."+seg+"()", where+"."+seg+"()", sig.Results().At(0).Type(), false
		}
	}
	return b.stringValue(expr, desc, where, t, guards)
}

// stringValue emits the guards and the conversion of expr (of type t) to a
// string and returns the variable that holds it; desc names expr in
// generation errors, where in the errors of the generated code. What a
// value locks on (package decorator applies the same rules at run time,
// to the ids of ResourceKey and UserKey):
//
//   - a string type: its bytes (a String method is not called); empty is
//     no key;
//   - an integer type: its number in decimal, even when it has a String
//     method (the number does not change when a name does);
//   - time.Time or *time.Time: the instant in UTC, RFC 3339 with
//     nanoseconds, without monotonic reading or zone; the zero time is no
//     key;
//   - another type with a String() string method: what it returns (empty
//     is no key), unless the type embeds a time.Time, whose String could
//     be the one promoted.
//
// A nil pointer or interface on the way is no key either.
func (b *keyBuilder) stringValue(expr, desc, where string, t types.Type, guards []guard) (string, error) {
	var stmts []string
	conv, isString := "", false
	switch u := t.Underlying().(type) {
	case *types.Basic:
		switch {
		case u.Info()&types.IsString != 0:
			conv, isString = expr, true
			if types.Unalias(t) != types.Typ[types.String] {
				conv = "string(" + expr + ")"
			}
		case u.Info()&types.IsInteger != 0 && u.Info()&types.IsUnsigned != 0:
			conv = b.g.ref("strconv") + ".FormatUint(" + convert("uint64", t, expr) + ", 10)"
		case u.Info()&types.IsInteger != 0:
			conv = b.g.ref("strconv") + ".FormatInt(" + convert("int64", t, expr) + ", 10)"
		}
	}
	empty := "is empty"
	switch {
	case conv != "":
	case isTime(t):
		if isNillable(t) && !b.guarded[expr] {
			guards = append(guards, guard{expr + " == nil", where})
			b.guarded[expr] = true
		}
		tv := b.newVar()
		stmts = append(stmts, tv+" := "+expr, b.failIf(tv+".IsZero()", b.term+": "+where+" is the zero time.Time"))
		conv = tv + ".UTC().Format(" + b.g.ref("time") + ".RFC3339Nano)"
	default:
		if stringMethod(t, b.g.pkg.Types) == nil {
			return "", fmt.Errorf("%s is %s; want a string, an integer, a time.Time, or a type with a String() string method", desc, b.g.typeString(t))
		}
		if embedsTime(t) {
			return "", fmt.Errorf("%s is %s, which embeds time.Time: its String() may be time.Time's, which includes the monotonic clock reading and the zone, so one instant would give several keys; name the time.Time field instead ({%s.Time})", desc, b.g.typeString(t), desc)
		}
		if isNillable(t) && !b.guarded[expr] {
			guards = append(guards, guard{expr + " == nil", where})
			b.guarded[expr] = true
		}
		conv, isString, empty = expr+".String()", true, "has an empty String()"
	}
	for _, g := range guards {
		b.kp.stmts = append(b.kp.stmts, b.failIf(g.cond, b.term+": "+g.where+" is nil"))
	}
	b.kp.stmts = append(b.kp.stmts, stmts...)
	v := b.newVar()
	b.kp.stmts = append(b.kp.stmts, v+" := "+conv)
	if isString {
		b.kp.stmts = append(b.kp.stmts, b.failIf(v+` == ""`, b.term+": "+where+" "+empty))
	}
	return v, nil
}

// stringMethod returns t's String() string method, or nil.
func stringMethod(t types.Type, pkg *types.Package) *types.Func {
	obj, _, _ := types.LookupFieldOrMethod(t, false, pkg, "String")
	fn, ok := obj.(*types.Func)
	if !ok {
		return nil
	}
	sig := fn.Type().(*types.Signature)
	if sig.Params().Len() != 0 || sig.Results().Len() != 1 || !types.Identical(sig.Results().At(0).Type(), types.Typ[types.String]) {
		return nil
	}
	return fn
}

// embedsTime reports whether t, or the struct t points to, embeds a
// time.Time or *time.Time, directly or through embedded structs. Which
// String such a type has cannot be told at run time (reflect does not
// say whether a method is declared or promoted), so package decorator
// refuses it, and so does the generator, for one rule in both.
func embedsTime(t types.Type) bool {
	seen := map[string]bool{}
	var walk func(types.Type) bool
	walk = func(t types.Type) bool {
		st, ok := derefStruct(t)
		if !ok || seen[types.TypeString(t, nil)] {
			return false
		}
		seen[types.TypeString(t, nil)] = true
		for f := range st.Fields() {
			if f.Embedded() && (isTime(f.Type()) || walk(f.Type())) {
				return true
			}
		}
		return false
	}
	return walk(t)
}

// isTime reports whether t is time.Time or *time.Time.
func isTime(t types.Type) bool {
	if p, ok := types.Unalias(t).(*types.Pointer); ok {
		t = p.Elem()
	}
	n, ok := types.Unalias(t).(*types.Named)
	return ok && n.Obj().Pkg() != nil && n.Obj().Pkg().Path() == "time" && n.Obj().Name() == "Time"
}

// isNillable reports whether selecting through a value of type t may
// dereference nil.
func isNillable(t types.Type) bool {
	switch t.Underlying().(type) {
	case *types.Pointer, *types.Interface:
		return true
	}
	return false
}

func derefStruct(t types.Type) (*types.Struct, bool) {
	if p, ok := t.Underlying().(*types.Pointer); ok {
		t = p.Elem()
	}
	st, ok := t.Underlying().(*types.Struct)
	return st, ok
}

// convert returns expr converted to the basic type named to, unless it is
// of that type already.
func convert(to string, t types.Type, expr string) string {
	if b, ok := types.Unalias(t).(*types.Basic); ok && b.Name() == to {
		return expr
	}
	return to + "(" + expr + ")"
}

// shortQualifier names packages by their name, for messages.
func (g *generator) shortQualifier(p *types.Package) string {
	if p == g.pkg.Types {
		return ""
	}
	return p.Name()
}
