package sample

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator"
	"github.com/txlock/txlock/internal/testdb"
)

// agree runs the key method of a generated proxy (gen, for the directive
// resource={v}) and decorator.ResourceKey("", v) on each value: both must
// give the same key, or both refuse the value for the same reason. The
// runtime's reason is read from a decorated call, which fails before it
// locks.
func agree[T any](t *testing.T, locker *dblock.Locker, name string, gen func(context.Context, T) (dblock.Key, error), values ...T) int {
	t.Helper()
	ctx := context.Background()
	rt := decorator.ResourceKey("", func(v T) T { return v })
	call := decorator.WithLockErr(locker, rt, func(context.Context, T) error {
		t.Errorf("%s: the decorated call ran", name)
		return nil
	})
	for _, v := range values {
		gk, gerr := gen(ctx, v)
		rk := rt(ctx, v)
		if gk != rk {
			t.Errorf("%s(%#v): generated code locks %s, ResourceKey %s", name, v, gk, rk)
			continue
		}
		if (gerr != nil) != rk.IsZero() {
			t.Errorf("%s(%#v): generated code returned %s, %v", name, v, gk, gerr)
			continue
		}
		if gerr == nil {
			continue
		}
		rerr := call(ctx, v)
		_, gwhy, _ := strings.Cut(gerr.Error(), "dblock: invalid key: resource: v ")
		_, rwhy, _ := strings.Cut(fmt.Sprint(rerr), `dblock: invalid key: ResourceKey(""): the id `)
		if gwhy == "" || gwhy != rwhy {
			t.Errorf("%s(%#v): generated code says %q, ResourceKey %q", name, v, gerr, rerr)
		}
	}
	return len(values)
}

// The generator and package decorator turn every kind of value into the
// same key text (TestKeyTextAgreesWithTxlockgen is named in
// decorator/keytext.go): fixed edge values, then random ones.
func TestKeyTextAgreesWithTxlockgen(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t)
	locker, err := dblock.New(db, dblock.Table(testdb.Table(t, db)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = locker.Close() })
	var p LockedFormats
	rng := rand.New(rand.NewPCG(1, 2))
	randInts := func(n int) []int64 {
		vs := make([]int64, n)
		for i := range vs {
			vs[i] = int64(rng.Uint64())
		}
		return vs
	}
	ints := append([]int64{0, 1, -1, 42, math.MaxInt64, math.MinInt64}, randInts(100)...)
	at := time.Date(2024, 2, 29, 9, 30, 0, 5e8, time.FixedZone("CET", 3600))
	times := []time.Time{{}, at, at.UTC(), time.Now(), time.Unix(0, 0), time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("X", -7*3600)), time.Date(2024, 1, 1, 0, 0, 0, 0, time.Local)}
	for range 100 {
		zone := time.FixedZone("R", (rng.IntN(27)-12)*3600)
		times = append(times, time.Unix(0, int64(rng.Uint64()>>2)).In(zone))
	}

	n := 0
	n += agree(t, locker, "string", p.lockKeyStr, "", "a", "order 42", "ünïcode", "with:colon", strings.Repeat("x", 300))
	n += agree(t, locker, "string type with a String method", p.lockKeyCode, "", "x1")
	n += agree(t, locker, "int", p.lockKeyInt, mapSlice(ints, func(v int64) int { return int(v) })...)
	n += agree(t, locker, "int8", p.lockKeyInt8, mapSlice(ints, func(v int64) int8 { return int8(v) })...)
	n += agree(t, locker, "int16", p.lockKeyInt16, mapSlice(ints, func(v int64) int16 { return int16(v) })...)
	n += agree(t, locker, "int32", p.lockKeyInt32, mapSlice(ints, func(v int64) int32 { return int32(v) })...)
	n += agree(t, locker, "int64", p.lockKeyInt64, ints...)
	n += agree(t, locker, "uint", p.lockKeyUint, mapSlice(ints, func(v int64) uint { return uint(v) })...)
	n += agree(t, locker, "uint8", p.lockKeyUint8, mapSlice(ints, func(v int64) uint8 { return uint8(v) })...)
	n += agree(t, locker, "uint16", p.lockKeyUint16, mapSlice(ints, func(v int64) uint16 { return uint16(v) })...)
	n += agree(t, locker, "uint32", p.lockKeyUint32, mapSlice(ints, func(v int64) uint32 { return uint32(v) })...)
	n += agree(t, locker, "uint64", p.lockKeyUint64, mapSlice(ints, func(v int64) uint64 { return uint64(v) })...)
	n += agree(t, locker, "uintptr", p.lockKeyUintptr, mapSlice(ints, func(v int64) uintptr { return uintptr(v) })...)
	n += agree(t, locker, "integer type with a String method", p.lockKeyRegion, mapSlice(ints, func(v int64) Region { return Region(v) })...)
	n += agree(t, locker, "time.Duration", p.lockKeyDuration, mapSlice(ints, func(v int64) time.Duration { return time.Duration(v) })...)
	n += agree(t, locker, "time.Time", p.lockKeyTime, times...)
	n += agree(t, locker, "*time.Time", p.lockKeyTimePtr, append(mapSlice(times, func(v time.Time) *time.Time { return &v }), nil)...)
	n += agree(t, locker, "pointer with a String method", p.lockKeyWarehouse, nil, &Warehouse{}, &Warehouse{Site: "lyon"})
	n += agree(t, locker, "struct with a String method", p.lockKeyLabel, Label{}, Label{Name: "x"})
	n += agree[fmt.Stringer](t, locker, "interface with a String method", p.lockKeyStringer, nil, Region(3), Label{}, Label{Name: "y"}, Code("c"), &Warehouse{Site: "nice"})
	t.Logf("%d values: the same key from generated code and from ResourceKey", n)
}

func mapSlice[T, U any](s []T, f func(T) U) []U {
	out := make([]U, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}
