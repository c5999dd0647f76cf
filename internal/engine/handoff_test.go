package engine

import (
	"slices"
	"testing"

	"github.com/durabus/durabus/internal/store"
)

func handoffIDs(rows []store.OutboxSend) []int64 {
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	return ids
}

func TestHandoffKeepsOrderAcrossPartialAndFullTakes(t *testing.T) {
	h := newHandoff()
	rows := func(ids ...int64) []store.OutboxRow {
		out := make([]store.OutboxRow, len(ids))
		for i, id := range ids {
			out[i] = store.OutboxRow{ID: id, EventID: "e", EventName: "n", Message: []byte{byte(id)}, Groups: []string{"g"}}
		}
		return out
	}
	h.push(rows(1, 2, 3))
	got := h.take(2)
	if ids := handoffIDs(got); !slices.Equal(ids, []int64{1, 2}) {
		t.Fatalf("first take: %v, want [1 2]", ids)
	}
	if got[0].State != store.Pending || got[0].Tracked != 1 || got[0].Message[0] != 1 {
		t.Fatalf("a pushed row became %+v", got[0])
	}
	h.push(rows(4, 5))
	if ids := handoffIDs(h.take(10)); !slices.Equal(ids, []int64{3, 4, 5}) {
		t.Fatalf("second take: %v, want [3 4 5]", ids)
	}
	if rest := h.take(10); rest != nil {
		t.Fatalf("an empty queue gave %v", handoffIDs(rest))
	}
	// The room kept after a full take serves the next rows, in order.
	h.push(rows(6, 7))
	if ids := handoffIDs(h.take(10)); !slices.Equal(ids, []int64{6, 7}) {
		t.Fatalf("after reuse: %v, want [6 7]", ids)
	}
}
