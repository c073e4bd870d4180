package audit

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"sync"
	"time"
)

// uuidClock keeps UUIDv7s from one process strictly increasing, even within one millisecond
// (RFC 9562 §6.2, method 3: the 12 bits of rand_a count up within a millisecond).
var uuidClock struct {
	sync.Mutex
	millis  int64
	counter uint16
}

// NewUUIDv7 returns a fresh version 7 UUID (RFC 9562): 48 bits of Unix time in milliseconds,
// a 12-bit counter that keeps ids of one process increasing within a millisecond, and 62
// random bits, in the canonical hyphenated form.
func NewUUIDv7() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("audit: no randomness for a UUID: " + err.Error())
	}
	now := time.Now().UnixMilli()
	uuidClock.Lock()
	if now > uuidClock.millis {
		uuidClock.millis = now
		// Start each millisecond at a random point in the lower half, leaving room to count.
		uuidClock.counter = binary.BigEndian.Uint16(b[6:8]) & 0x07ff
	} else {
		// The clock stood still or went back: stay on the last millisecond and count up.
		uuidClock.counter++
		if uuidClock.counter > 0x0fff {
			uuidClock.millis++
			uuidClock.counter = 0
		}
	}
	millis, counter := uuidClock.millis, uuidClock.counter
	uuidClock.Unlock()

	b[0] = byte(millis >> 40)
	b[1] = byte(millis >> 32)
	b[2] = byte(millis >> 24)
	b[3] = byte(millis >> 16)
	b[4] = byte(millis >> 8)
	b[5] = byte(millis)
	b[6] = 0x70 | byte(counter>>8) // version 7
	b[7] = byte(counter)
	b[8] = b[8]&0x3f | 0x80 // variant 10
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
