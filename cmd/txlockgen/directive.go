package main

import (
	"fmt"
	"go/token"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/txlock/txlock/dblock"
)

// directivePrefix starts every txlockgen directive; lockDirective is the
// one there is.
const (
	directivePrefix = "//txlock:"
	lockDirective   = "//txlock:lock"
)

// keyTerms and optionTerms are the terms a //txlock:lock directive knows,
// for messages.
const knownTerms = "global, method, operation, resource, user (granularities), key (a key function), shared, permits, wait, nowait, maxhold, mininterval (options)"

// A lockSpec is one parsed //txlock:lock directive.
type lockSpec struct {
	pos     token.Position
	text    string // the terms as written, for doc comments
	keyText string // the key terms only

	global    bool
	method    bool   // a method term
	methodArg string // its name, "" for the default Interface.Method
	operation string
	resource  *template
	user      *template
	userCtx   bool
	keyFunc   string
	shared    bool // the key is taken in shared mode (dblock.Shared)
	permits   int  // dblock.Permits(permits): one of the key's permits; 0 without
	wait      time.Duration
	noWait    bool
	maxHold   time.Duration
	minIntvl  time.Duration
}

// hasOptions reports whether the directive sets options of the
// acquisition.
func (s *lockSpec) hasOptions() bool {
	return s.shared || s.permits > 0 || s.noWait || s.wait > 0 || s.maxHold > 0 || s.minIntvl > 0
}

// A template computes a string from the request: literal text and PATH
// placeholders.
type template struct {
	text  string
	parts []templatePart
}

type templatePart struct {
	lit  string
	path []string // nil for a literal
}

// parseLock parses the text of a //txlock:lock comment found at pos.
func parseLock(text string, pos token.Position) (*lockSpec, error) {
	fail := func(format string, args ...any) (*lockSpec, error) {
		return nil, &posError{pos: pos, msg: fmt.Sprintf(format, args...)}
	}
	rest := strings.TrimPrefix(text, lockDirective)
	if rest != "" && rest[0] != ' ' && rest[0] != '\t' {
		return fail("unknown directive %s: the directive is %s", strings.Fields(text)[0], lockDirective)
	}
	s := &lockSpec{pos: pos, text: strings.Join(strings.Fields(rest), " ")}
	seen := map[string]bool{}
	for _, term := range strings.Fields(rest) {
		name, value, hasValue := strings.Cut(term, "=")
		if seen[name] {
			return fail("%s given twice", name)
		}
		seen[name] = true
		needValue := func(what string) error {
			if !hasValue || value == "" {
				return &posError{pos: pos, msg: fmt.Sprintf("%s needs a value: %s=%s", name, name, what)}
			}
			return nil
		}
		noValue := func() error {
			if hasValue {
				return &posError{pos: pos, msg: fmt.Sprintf("%s takes no value (got %s)", name, term)}
			}
			return nil
		}
		var err error
		switch name {
		case "method", "operation", "resource", "user":
			if err = noEquals(name, value, pos); err != nil {
				return nil, err
			}
		}
		switch name {
		case "global":
			err = noValue()
			s.global = true
		case "method":
			s.method, s.methodArg = true, value
			if hasValue && value == "" {
				err = needValue("NAME (or method alone for Interface.Method)")
			}
		case "operation":
			err = needValue("NAME")
			s.operation = value
		case "resource":
			if err = needValue("TEMPLATE, e.g. resource=order:{OrderID}"); err == nil {
				s.resource, err = parseTemplate(name, value, pos)
			}
		case "user":
			if err = needValue("TEMPLATE or user=ctx"); err == nil {
				if value == "ctx" {
					s.userCtx = true
				} else {
					s.user, err = parseTemplate(name, value, pos)
				}
			}
		case "key":
			if err = needValue("FUNC, a function of the package: func(ctx context.Context, <the method's other parameters>) dblock.Key"); err == nil && !token.IsIdentifier(value) {
				err = &posError{pos: pos, msg: fmt.Sprintf("key=%s: want the name of a function of the package", value)}
			}
			s.keyFunc = value
		case "wait":
			s.wait, err = durationTerm(name, value, "2s", needValue, pos)
		case "maxhold":
			s.maxHold, err = durationTerm(name, value, "30s", needValue, pos)
		case "mininterval":
			s.minIntvl, err = durationTerm(name, value, "1h", needValue, pos)
			if err == nil && s.minIntvl%time.Microsecond != 0 {
				err = &posError{pos: pos, msg: fmt.Sprintf("mininterval=%s: dblock.MinInterval counts whole microseconds: want a multiple of 1µs such as 1h or 250ms", value)}
			}
		case "nowait":
			err = noValue()
			s.noWait = true
		case "shared":
			err = noValue()
			s.shared = true
		case "permits":
			s.permits, err = permitsTerm(value, needValue, pos)
		default:
			return fail("unknown term %q in %s: want %s", name, lockDirective, knownTerms)
		}
		if err != nil {
			return nil, err
		}
		if !optionTerms[name] {
			s.keyText = strings.TrimPrefix(s.keyText+" "+term, " ")
		}
	}
	keyTerms := 0
	for _, t := range []string{"global", "method", "operation", "resource", "user"} {
		if seen[t] {
			keyTerms++
		}
	}
	switch {
	case keyTerms == 0 && s.keyFunc == "":
		return fail("%s names no key: add global, method, operation=NAME, resource=TEMPLATE, user=TEMPLATE, user=ctx or key=FUNC", lockDirective)
	case s.keyFunc != "" && keyTerms > 0:
		return fail("key=%s computes the whole key: it cannot be combined with global, method, operation, resource or user", s.keyFunc)
	case s.global && keyTerms > 1:
		return fail("global is the one system-wide key: it cannot be combined with method, operation, resource or user")
	case s.noWait && s.wait > 0:
		return fail("wait and nowait exclude each other")
	case s.shared && s.minIntvl > 0:
		return fail("shared and mininterval exclude each other: mininterval spaces the runs of one job, which runs alone; drop shared to take the key exclusively")
	case s.permits > 0 && s.shared:
		return fail("permits and shared exclude each other: permits=%d lets %d calls hold the key's semaphore at once, shared lets any number hold its lock; keep one", s.permits, s.permits)
	case s.permits > 0 && s.minIntvl > 0:
		return fail("permits and mininterval exclude each other: mininterval spaces the runs of one job, which runs alone, while permits=%d runs up to %d calls at once; keep one", s.permits, s.permits)
	}
	return s, nil
}

// termNames are the terms of a lock directive, longest first (nowait
// before wait).
var termNames = [...]string{"mininterval", "operation", "resource", "maxhold", "permits", "global", "method", "nowait", "shared", "user", "wait", "key"}

// optionTerms are the terms that set an option of the acquisition, not
// part of its key.
var optionTerms = map[string]bool{"shared": true, "permits": true, "wait": true, "nowait": true, "maxhold": true, "mininterval": true}

// durationTerm parses the positive DURATION of term=value (example: a
// typical value, for the message).
func durationTerm(term, value, example string, needValue func(string) error, pos token.Position) (time.Duration, error) {
	if err := needValue("DURATION, e.g. " + term + "=" + example); err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(value)
	if err != nil || d <= 0 {
		return 0, &posError{pos: pos, msg: fmt.Sprintf("%s=%s: want a positive duration such as %s or 250ms", term, value, example)}
	}
	return d, nil
}

// permitsTerm parses the N of permits=N: a whole number from 1 to
// dblock.MaxPermits, which dblock.Permits would refuse at every call.
func permitsTerm(value string, needValue func(string) error, pos token.Position) (int, error) {
	if err := needValue("N, the number of calls that may hold the key at once, e.g. permits=5"); err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(value)
	if err != nil || n < 1 || n > dblock.MaxPermits {
		return 0, &posError{pos: pos, msg: fmt.Sprintf("permits=%s: want a whole number from 1 to %d (dblock.MaxPermits), such as permits=5", value, dblock.MaxPermits)}
	}
	return n, nil
}

// noEquals rejects an '=' in the value of a key term: it is the mark of a
// missing space ("resource=order:{ID}wait=2s"), which would lock
// "order:42wait=2s" with no wait bound.
func noEquals(term, value string, pos token.Position) error {
	i := strings.IndexByte(value, '=')
	if i < 0 {
		return nil
	}
	before := value[:i]
	for _, name := range termNames {
		if j := len(before) - len(name); j > 0 && before[j:] == name {
			return &posError{pos: pos, msg: fmt.Sprintf("%s=%s: a space is missing before %s=: write %s=%s %s ('=' cannot be part of a key)",
				term, value, name, term, value[:j], value[j:])}
		}
	}
	return &posError{pos: pos, msg: fmt.Sprintf("%s=%s: '=' cannot be part of a key: if another term follows, separate it with a space", term, value)}
}

// parseTemplate parses the value of a resource= or user= term.
func parseTemplate(term, v string, pos token.Position) (*template, error) {
	fail := func(format string, args ...any) (*template, error) {
		return nil, &posError{pos: pos, msg: fmt.Sprintf("%s=%s: ", term, v) + fmt.Sprintf(format, args...)}
	}
	t := &template{text: v}
	if !strings.ContainsAny(v, "{}") {
		p, err := parsePath(v)
		if err != nil {
			return fail("%v", err)
		}
		t.parts = []templatePart{{path: p}}
		return t, nil
	}
	rest := v
	for rest != "" {
		open := strings.IndexByte(rest, '{')
		if c := strings.IndexByte(rest, '}'); c >= 0 && (open < 0 || c < open) {
			return fail("unbalanced '}'")
		}
		if open < 0 {
			t.parts = append(t.parts, templatePart{lit: rest})
			break
		}
		if open > 0 {
			t.parts = append(t.parts, templatePart{lit: rest[:open]})
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return fail("unbalanced '{'")
		}
		p, err := parsePath(rest[open+1 : open+end])
		if err != nil {
			return fail("%v", err)
		}
		t.parts = append(t.parts, templatePart{path: p})
		rest = rest[open+end+1:]
	}
	return t, nil
}

// parsePath splits a dotted selector such as req.Customer.ID.
func parsePath(s string) ([]string, error) {
	parts := strings.Split(s, ".")
	for _, p := range parts {
		if !token.IsIdentifier(p) {
			return nil, fmt.Errorf("%q is not a path: want a field of the request (OrderID), or a parameter and fields (req.Customer.ID), or text with {PATH} placeholders", s)
		}
	}
	return parts, nil
}

// lookAlikeRE matches the text of a comment line that reads as a lock
// directive: txlock, a separator, lock, in any case.
var lookAlikeRE = regexp.MustCompile(`(?i)^txlock\s*[:_.-]?\s*lock\b`)

// lookAlike reports whether a comment (its ast.Comment.Text, // or /* */)
// reads as a lock directive without being one: a space after the slashes,
// a block comment, another case. It returns the directive to write and
// what differs. txlockgen only reads //txlock: line comments, so a
// look-alike would leave its method unlocked without a word.
func lookAlike(text string) (fix, why string, ok bool) {
	if strings.HasPrefix(text, directivePrefix) {
		return "", "", false
	}
	block := strings.HasPrefix(text, "/*")
	lines := []string{strings.TrimPrefix(text, "//")}
	if block {
		lines = strings.Split(strings.TrimSuffix(strings.TrimPrefix(text, "/*"), "*/"), "\n")
	}
	for _, l := range lines {
		body := strings.TrimLeft(l, " \t*/+@")
		m := lookAlikeRE.FindString(body)
		if m == "" {
			continue
		}
		fix = lockDirective
		if terms := strings.Fields(body[len(m):]); len(terms) > 0 {
			fix += " " + strings.Join(terms, " ")
		}
		var whys []string
		switch {
		case block:
			whys = append(whys, "a // line comment, not /* */")
		case body != l:
			whys = append(whys, "no space or other character between // and txlock")
		}
		if m != "txlock:lock" {
			whys = append(whys, "txlock:lock in lower case, with a colon")
		}
		return fix, strings.Join(whys, ", "), true
	}
	return "", "", false
}
