package decorator

import (
	"fmt"
	"reflect"
	"strconv"
	"time"
)

// The text a key takes from an id: the rules by which cmd/txlockgen turns
// a placeholder into text ("What a placeholder locks on" in its
// documentation), applied at run time to the ids of ResourceKey and
// UserKey. The generator emits code specialised to each placeholder's type
// instead of calling this; TestKeyTextAgreesWithTxlockgen, in
// cmd/txlockgen/internal/sample, runs both on the same values.
//
//   - a string type: its bytes, even when the type has a String method;
//     empty is no key;
//   - an integer type: its number in decimal, even when the type has a
//     String method (time.Duration: its nanoseconds);
//   - time.Time or *time.Time: the instant in UTC, RFC 3339 with
//     nanoseconds; the zero time and a nil pointer are no key;
//   - another type with a String() string method: what String returns
//     (a nil pointer or interface, or an empty result, is no key), unless
//     the type embeds a time.Time, whose String could be the one promoted.

var (
	timeType     = reflect.TypeFor[time.Time]()
	timePtrType  = reflect.TypeFor[*time.Time]()
	stringerType = reflect.TypeFor[fmt.Stringer]()
)

// textOf returns the function that gives the text of an id of type T, or,
// in its second result, why there is none ("is empty", "is nil", ...). It
// fails when no value of T can be part of a key, with an error that reads
// after "the id". The type is read once, here: the function returned only
// converts.
func textOf[T any]() (func(T) (text, empty string), error) {
	t := reflect.TypeFor[T]()
	switch t {
	case reflect.TypeFor[string]():
		return func(v T) (string, string) { return nonEmpty(any(v).(string)) }, nil
	case timeType:
		return func(v T) (string, string) { return timeText(any(v).(time.Time)) }, nil
	case timePtrType:
		return func(v T) (string, string) {
			if p := any(v).(*time.Time); p != nil {
				return timeText(*p)
			}
			return "", "is nil"
		}, nil
	}
	switch t.Kind() {
	case reflect.String:
		return func(v T) (string, string) { return nonEmpty(reflect.ValueOf(v).String()) }, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return func(v T) (string, string) { return strconv.FormatInt(reflect.ValueOf(v).Int(), 10), "" }, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return func(v T) (string, string) { return strconv.FormatUint(reflect.ValueOf(v).Uint(), 10), "" }, nil
	}
	if !t.Implements(stringerType) {
		return nil, fmt.Errorf("is %s; want a string, an integer, a time.Time, or a type with a String() string method", t)
	}
	if embedsTime(t) {
		return nil, fmt.Errorf("is %s, which embeds time.Time: its String() may be time.Time's, which includes the monotonic clock reading and the zone, so one instant would give several keys; return the time.Time field instead", t)
	}
	nillable := t.Kind() == reflect.Pointer || t.Kind() == reflect.Interface
	return func(v T) (string, string) {
		if nillable && reflect.ValueOf(&v).Elem().IsNil() {
			return "", "is nil"
		}
		if s := any(v).(fmt.Stringer).String(); s != "" {
			return s, ""
		}
		return "", "has an empty String()"
	}, nil
}

// nonEmpty returns s, or why there is no text.
func nonEmpty(s string) (string, string) {
	if s == "" {
		return "", "is empty"
	}
	return s, ""
}

// timeText returns the instant of tm in UTC, RFC 3339 with nanoseconds
// (trailing zeros dropped), so that one instant gives one text whatever
// its zone or monotonic reading.
func timeText(tm time.Time) (string, string) {
	if tm.IsZero() {
		return "", "is the zero time.Time"
	}
	return tm.UTC().Format(time.RFC3339Nano), ""
}

// embedsTime reports whether t, or the struct t points to, embeds a
// time.Time or *time.Time, directly or through embedded structs.
func embedsTime(t reflect.Type) bool {
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type) bool
	walk = func(t reflect.Type) bool {
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || seen[t] {
			return false
		}
		seen[t] = true
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.Anonymous {
				continue
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft == timeType || walk(ft) {
				return true
			}
		}
		return false
	}
	return walk(t)
}
