package sample

import (
	"context"
	"fmt"
	"time"
)

//go:generate go run github.com/txlock/txlock/cmd/txlockgen -type Formats

// Formats has a locked method per kind of value a placeholder takes. The
// keys of its generated proxy are compared with those that
// decorator.ResourceKey computes from the same values (formats_test.go):
// generated code and the runtime must turn every value into the same
// text, and refuse the same empty ones.
type Formats interface {
	//txlock:lock resource={v}
	Str(ctx context.Context, v string) error
	//txlock:lock resource={v}
	Code(ctx context.Context, v Code) error
	//txlock:lock resource={v}
	Int(ctx context.Context, v int) error
	//txlock:lock resource={v}
	Int8(ctx context.Context, v int8) error
	//txlock:lock resource={v}
	Int16(ctx context.Context, v int16) error
	//txlock:lock resource={v}
	Int32(ctx context.Context, v int32) error
	//txlock:lock resource={v}
	Int64(ctx context.Context, v int64) error
	//txlock:lock resource={v}
	Uint(ctx context.Context, v uint) error
	//txlock:lock resource={v}
	Uint8(ctx context.Context, v uint8) error
	//txlock:lock resource={v}
	Uint16(ctx context.Context, v uint16) error
	//txlock:lock resource={v}
	Uint32(ctx context.Context, v uint32) error
	//txlock:lock resource={v}
	Uint64(ctx context.Context, v uint64) error
	//txlock:lock resource={v}
	Uintptr(ctx context.Context, v uintptr) error
	//txlock:lock resource={v}
	Region(ctx context.Context, v Region) error
	//txlock:lock resource={v}
	Duration(ctx context.Context, v time.Duration) error
	//txlock:lock resource={v}
	Time(ctx context.Context, v time.Time) error
	//txlock:lock resource={v}
	TimePtr(ctx context.Context, v *time.Time) error
	//txlock:lock resource={v}
	Warehouse(ctx context.Context, v *Warehouse) error
	//txlock:lock resource={v}
	Label(ctx context.Context, v Label) error
	//txlock:lock resource={v}
	Stringer(ctx context.Context, v fmt.Stringer) error
}

// Code is a string type with a String method: its key is its bytes.
type Code string

// String describes the code.
func (c Code) String() string { return "code " + string(c) }

// Label is a struct keyed by its String, a value method.
type Label struct{ Name string }

// String returns the label's name.
func (l Label) String() string { return l.Name }
