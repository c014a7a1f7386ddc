package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/txlock/txlock/dblock"
)

// keyFlags are the flags that name a key: --key "resource=order:42,user=u-7"
// and one flag per field.
type keyFlags struct {
	spec                              string
	resource, operation, method, user string
	global                            bool
}

func (kf *keyFlags) register(f *pflag.FlagSet, what, keyHelp string) {
	f.StringVar(&kf.spec, "key", "", keyHelp+`, e.g. "resource=order:42,user=u-7" (fields: resource, operation, method, user, global)`)
	f.StringVar(&kf.resource, "key-resource", "", what+" resource is this (e.g. order:42)")
	f.StringVar(&kf.operation, "key-operation", "", what+" operation is this (e.g. refund)")
	f.StringVar(&kf.method, "key-method", "", what+" method is this (e.g. OrderService.Refund)")
	f.StringVar(&kf.user, "key-user", "", what+" user is this (e.g. u-7)")
	f.BoolVar(&kf.global, "key-global", false, "the global key")
}

// key merges --key and the --key-* flags. set reports whether any was given.
func (kf *keyFlags) key() (k dblock.Key, set bool, err error) {
	k, err = parseKeySpec(kf.spec)
	if err != nil {
		return k, false, err
	}
	for _, f := range []struct {
		name string
		v    string
		dst  *string
	}{
		{"resource", kf.resource, &k.Resource},
		{"operation", kf.operation, &k.Operation},
		{"method", kf.method, &k.Method},
		{"user", kf.user, &k.User},
	} {
		if f.v == "" {
			continue
		}
		if *f.dst != "" && *f.dst != f.v {
			return k, false, fmt.Errorf("--key sets %s=%q but --key-%s says %q", f.name, *f.dst, f.name, f.v)
		}
		*f.dst = f.v
	}
	k.Global = k.Global || kf.global
	return k, !k.IsZero(), nil
}

// filter returns the key whose set fields the shown keys must match.
func (kf *keyFlags) filter() (dblock.Key, error) {
	k, _, err := kf.key()
	return k, err
}

// exact returns the one key the flags name, validated.
func (kf *keyFlags) exact() (dblock.Key, error) {
	k, set, err := kf.key()
	if err != nil {
		return k, err
	}
	if !set {
		return k, errors.New("name the key with --key, e.g. --key 'resource=order:42', or the --key-* flags")
	}
	if err := k.Validate(); err != nil {
		return k, err
	}
	return k, nil
}

// parseKeySpec parses "resource=order:42,user=u-7" (a field per comma;
// "global" alone, or global=true, for the global key).
func parseKeySpec(spec string) (dblock.Key, error) {
	var k dblock.Key
	if strings.TrimSpace(spec) == "" {
		return k, nil
	}
	seen := map[string]bool{}
	for _, part := range strings.Split(spec, ",") {
		name, value, hasValue := strings.Cut(part, "=")
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "user_id" {
			name = "user"
		}
		if seen[name] {
			return k, fmt.Errorf("--key %q: %s given twice", spec, name)
		}
		seen[name] = true
		var dst *string
		switch name {
		case "resource":
			dst = &k.Resource
		case "operation":
			dst = &k.Operation
		case "method":
			dst = &k.Method
		case "user":
			dst = &k.User
		case "global":
			if !hasValue {
				k.Global = true
				continue
			}
			b, err := strconv.ParseBool(strings.TrimSpace(value))
			if err != nil {
				return k, fmt.Errorf("--key %q: global=%q: want true or false", spec, value)
			}
			k.Global = b
			continue
		default:
			return k, fmt.Errorf("--key %q: unknown field %q (want resource, operation, method, user or global)", spec, name)
		}
		if !hasValue || value == "" {
			return k, fmt.Errorf("--key %q: %s needs a value, e.g. %s=x", spec, name, name)
		}
		*dst = value
	}
	return k, nil
}

// matches reports whether k has every field that filter sets.
func matches(k, filter dblock.Key) bool {
	return (filter.Resource == "" || k.Resource == filter.Resource) &&
		(filter.Operation == "" || k.Operation == filter.Operation) &&
		(filter.Method == "" || k.Method == filter.Method) &&
		(filter.User == "" || k.User == filter.User) &&
		(!filter.Global || k.Global)
}

// filterSQL returns the WHERE conditions (with a leading " AND ") and
// arguments that select the key rows matching filter.
func filterSQL(filter dblock.Key) (string, []any) {
	var b strings.Builder
	var args []any
	for _, c := range []struct{ col, v string }{
		{"resource", filter.Resource}, {"operation", filter.Operation},
		{"method", filter.Method}, {"user_id", filter.User},
	} {
		if c.v != "" {
			b.WriteString(" AND " + c.col + " = ?")
			args = append(args, c.v)
		}
	}
	if filter.Global {
		b.WriteString(" AND is_global = 1")
	}
	return b.String(), args
}

// keyJSON is a key in JSON output: the fields that are set.
type keyJSON struct {
	Resource  string `json:"resource,omitempty"`
	Operation string `json:"operation,omitempty"`
	Method    string `json:"method,omitempty"`
	User      string `json:"user,omitempty"`
	Global    bool   `json:"global,omitempty"`
}

func toKeyJSON(k dblock.Key) keyJSON {
	return keyJSON{Resource: k.Resource, Operation: k.Operation, Method: k.Method, User: k.User, Global: k.Global}
}
