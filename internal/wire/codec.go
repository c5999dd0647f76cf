package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// The envelope codec. Every event is encoded once and decoded at least
// once, and encoding/json spends most of that time in reflection and in a
// second pass that validates the input before decoding it. The envelope has
// a fixed shape, so it is written and read here in one pass, with the
// semantics of encoding/json: Encode writes the bytes json.Marshal writes,
// and Decode accepts what json.Unmarshal accepts and fills the same fields
// (keys match case-insensitively, a later key wins, null leaves a field as
// it was, unknown keys are skipped). codec_test.go checks both against
// encoding/json, and a fuzz target keeps checking.

// maxDepth is how deeply a message may nest, as in encoding/json.
const maxDepth = 10000

// appendEnvelope appends the JSON of e, as json.Marshal writes it.
func appendEnvelope(dst []byte, e *Envelope) ([]byte, error) {
	dst = append(dst, `{"eventName":`...)
	dst = appendString(dst, e.EventName)
	dst = append(dst, `,"eventId":`...)
	dst = appendString(dst, e.EventID)
	dst = append(dst, `,"publishedBy":`...)
	dst = appendString(dst, e.PublishedBy)
	dst = append(dst, `,"publishedAt":`...)
	dst = appendString(dst, e.PublishedAt)
	dst = append(dst, `,"payload":`...)
	var err error
	if dst, err = appendRaw(dst, e.Payload); err != nil {
		return nil, err
	}
	if e.CorrelationID != "" {
		dst = append(dst, `,"correlationId":`...)
		dst = appendString(dst, e.CorrelationID)
	}
	if e.Key != "" {
		dst = append(dst, `,"key":`...)
		dst = appendString(dst, e.Key)
	}
	if len(e.Headers) > 0 {
		dst = append(dst, `,"headers":{`...)
		keys := make([]string, 0, len(e.Headers))
		for k := range e.Headers {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst = appendString(dst, e.Headers[k])
		}
		dst = append(dst, '}')
	}
	if e.Replay {
		dst = append(dst, `,"replay":true`...)
	}
	return append(dst, '}'), nil
}

// appendRaw appends a json.RawMessage as json.Marshal does: null when nil,
// otherwise validated, compacted and with <, >, &, U+2028 and U+2029
// escaped. The payloads durabus writes are already so, and are copied.
func appendRaw(dst []byte, raw []byte) ([]byte, error) {
	if raw == nil {
		return append(dst, "null"...), nil
	}
	s := scanner{b: raw}
	s.ws()
	if err := s.skip(0); err != nil {
		return nil, fmt.Errorf("json: error calling MarshalJSON for type json.RawMessage: %w", err)
	}
	s.ws()
	if s.i != len(raw) {
		return nil, fmt.Errorf("json: error calling MarshalJSON for type json.RawMessage: %w", s.syntax("after top-level value"))
	}
	if !s.rewrite {
		return append(dst, raw...), nil
	}
	out, err := json.Marshal(json.RawMessage(raw))
	if err != nil {
		return nil, err
	}
	return append(dst, out...), nil
}

const hex = "0123456789abcdef"

// appendString appends s as a JSON string, escaped as json.Marshal escapes
// it (HTML characters included).
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// scanner reads JSON from b at i.
type scanner struct {
	b []byte
	i int
	// rewrite is set when a skipped value holds what json.Marshal would
	// write differently: whitespace, or characters it escapes.
	rewrite bool
}

var errEOF = errors.New("unexpected end of JSON input")

// syntax is the error for the byte at i, or for the end of the input.
func (s *scanner) syntax(context string) error {
	if s.i >= len(s.b) {
		return errEOF
	}
	return fmt.Errorf("invalid character %q %s at offset %d", s.b[s.i], context, s.i)
}

// ws skips whitespace.
func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
			s.rewrite = true
		default:
			return
		}
	}
}

// next reports whether the byte at i is c, and if so skips it.
func (s *scanner) next(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// literal skips the literal word (true, false or null) at i.
func (s *scanner) literal(word string) error {
	for k := 0; k < len(word); k++ {
		if s.i >= len(s.b) {
			return errEOF
		}
		if s.b[s.i] != word[k] {
			return s.syntax("in literal " + word)
		}
		s.i++
	}
	return nil
}

// str reads the string at i (after its opening quote was checked) and
// returns it unescaped, as json.Unmarshal would: invalid UTF-8 and lone
// surrogates become U+FFFD.
func (s *scanner) str() (string, error) {
	out, err := s.scanString(true)
	return string(out), err
}

// skipString checks the string at i and moves past it.
func (s *scanner) skipString() error {
	_, err := s.scanString(false)
	return err
}

// scanString reads a string; keep asks for its unescaped bytes.
func (s *scanner) scanString(keep bool) ([]byte, error) {
	s.i++ // the opening quote
	start := s.i
	// The common case: nothing to unescape.
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return s.b[start : s.i-1], nil
		case c == '\\' || c < 0x20 || c >= utf8.RuneSelf:
			var out []byte
			if keep {
				out = make([]byte, 0, s.i-start+16)
				out = append(out, s.b[start:s.i]...)
			}
			return s.scanEscaped(out, keep)
		case c == '<' || c == '>' || c == '&':
			s.rewrite = true
		}
		s.i++
	}
	return nil, errEOF
}

// scanEscaped goes on reading a string at its first byte that is not
// plain ASCII, appending to out when keep is set.
func (s *scanner) scanEscaped(out []byte, keep bool) ([]byte, error) {
	add := func(p ...byte) {
		if keep {
			out = append(out, p...)
		}
	}
	addRune := func(r rune) {
		if keep {
			out = utf8.AppendRune(out, r)
		}
	}
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return out, nil
		case c < 0x20:
			return nil, s.syntax("in string literal")
		case c == '\\':
			s.i++
			if s.i >= len(s.b) {
				return nil, errEOF
			}
			switch e := s.b[s.i]; e {
			case '"', '\\', '/':
				add(e)
				s.i++
			case 'b':
				add('\b')
				s.i++
			case 'f':
				add('\f')
				s.i++
			case 'n':
				add('\n')
				s.i++
			case 'r':
				add('\r')
				s.i++
			case 't':
				add('\t')
				s.i++
			case 'u':
				s.i++
				r, err := s.hex4()
				if err != nil {
					return nil, err
				}
				if utf16.IsSurrogate(r) {
					// A pair is two escapes; otherwise the first alone is
					// invalid, and the next is read on its own.
					if s.i+1 < len(s.b) && s.b[s.i] == '\\' && s.b[s.i+1] == 'u' {
						save := s.i
						s.i += 2
						r2, err := s.hex4()
						if err != nil {
							return nil, err
						}
						if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
							addRune(d)
							continue
						}
						s.i = save
					}
					r = utf8.RuneError
				}
				addRune(r)
			default:
				return nil, s.syntax("in string escape code")
			}
		case c < utf8.RuneSelf:
			if c == '<' || c == '>' || c == '&' {
				s.rewrite = true
			}
			add(c)
			s.i++
		default:
			r, size := utf8.DecodeRune(s.b[s.i:])
			if r == '\u2028' || r == '\u2029' {
				s.rewrite = true
			}
			if r == utf8.RuneError && size == 1 {
				addRune(utf8.RuneError)
			} else {
				add(s.b[s.i : s.i+size]...)
			}
			s.i += size
		}
	}
	return nil, errEOF
}

// hex4 reads the four hex digits of a \u escape.
func (s *scanner) hex4() (rune, error) {
	var r rune
	for k := 0; k < 4; k++ {
		if s.i >= len(s.b) {
			return 0, errEOF
		}
		c := s.b[s.i]
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, s.syntax("in \\u hexadecimal character escape")
		}
		r = r<<4 | rune(c)
		s.i++
	}
	return r, nil
}

// members reads the object at i (its '{' checked by the caller): for each
// member it reads the key, unescaped when keys is set, and calls value
// with the scanner at the member's value, which value must move past.
func (s *scanner) members(keys bool, value func(key []byte) error) error {
	s.i++ // the '{'
	s.ws()
	if s.next('}') {
		return nil
	}
	for {
		if s.i >= len(s.b) {
			return errEOF
		}
		if s.b[s.i] != '"' {
			return s.syntax("looking for beginning of object key string")
		}
		key, err := s.scanString(keys)
		if err != nil {
			return err
		}
		s.ws()
		if !s.next(':') {
			return s.syntax("after object key")
		}
		s.ws()
		if err := value(key); err != nil {
			return err
		}
		if more, err := s.more('}', "after object key:value pair"); !more || err != nil {
			return err
		}
	}
}

// more moves past what follows an object member or an array element: the
// closing byte (more is false) or a comma and the space after it (more is
// true). after names the place in a syntax error.
func (s *scanner) more(closing byte, after string) (more bool, err error) {
	s.ws()
	if s.next(closing) {
		return false, nil
	}
	if !s.next(',') {
		return false, s.syntax(after)
	}
	s.ws()
	return true, nil
}

// skip checks the value at i and moves past it; depth is how deeply it
// nests.
func (s *scanner) skip(depth int) error {
	if s.i >= len(s.b) {
		return errEOF
	}
	switch c := s.b[s.i]; {
	case c == '"':
		return s.skipString()
	case c == '{' || c == '[':
		if depth+1 > maxDepth {
			return errors.New("exceeded max depth")
		}
		if c == '{' {
			return s.members(false, func([]byte) error { return s.skip(depth + 1) })
		}
		s.i++
		s.ws()
		if s.next(']') {
			return nil
		}
		for {
			if err := s.skip(depth + 1); err != nil {
				return err
			}
			if more, err := s.more(']', "after array element"); !more || err != nil {
				return err
			}
		}
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || ('0' <= c && c <= '9'):
		return s.number()
	default:
		return s.syntax("looking for beginning of value")
	}
}

// number skips a number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() error {
	s.next('-')
	digits := func() int {
		n := 0
		for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
			s.i++
			n++
		}
		return n
	}
	switch {
	case s.next('0'):
	case s.i < len(s.b) && '1' <= s.b[s.i] && s.b[s.i] <= '9':
		digits()
	default:
		return s.syntax("in numeric literal")
	}
	if s.next('.') && digits() == 0 {
		return s.syntax("after decimal point in numeric literal")
	}
	if s.next('e') || s.next('E') {
		if !s.next('+') {
			s.next('-')
		}
		if digits() == 0 {
			return s.syntax("in exponent of numeric literal")
		}
	}
	return nil
}

// typeError is a value of the wrong JSON type for a field.
func typeError(field, want string) error {
	return fmt.Errorf("json: cannot unmarshal a non-%s value into the field %s", want, field)
}

// envelopeFields are the keys of an envelope, in the order they are
// matched.
var envelopeFields = []string{"eventName", "eventId", "publishedBy", "publishedAt", "payload", "correlationId", "key", "headers", "replay"}

// decodeEnvelope fills e from msg, as json.Unmarshal(msg, e) would.
func decodeEnvelope(msg []byte, e *Envelope) error {
	s := scanner{b: msg}
	s.ws()
	if s.i >= len(s.b) {
		return errEOF
	}
	if s.b[s.i] == 'n' {
		// json.Unmarshal leaves e as it is for null; Decode then finds
		// what is missing.
		if err := s.literal("null"); err != nil {
			return err
		}
		s.ws()
		if s.i != len(s.b) {
			return s.syntax("after top-level value")
		}
		return nil
	}
	if s.b[s.i] != '{' {
		if err := s.skip(0); err != nil {
			return err
		}
		return errors.New("json: cannot unmarshal a non-object value into an envelope")
	}
	if err := s.members(true, func(key []byte) error { return s.field(e, string(key)) }); err != nil {
		return err
	}
	s.ws()
	if s.i != len(s.b) {
		return s.syntax("after top-level value")
	}
	return nil
}

// field reads the value at i into the field of e that key names.
func (s *scanner) field(e *Envelope, key string) error {
	name := ""
	for _, f := range envelopeFields {
		if key == f || strings.EqualFold(key, f) {
			name = f
			break
		}
	}
	if s.i >= len(s.b) {
		return errEOF
	}
	c := s.b[s.i]
	switch name {
	case "":
		return s.skip(1)
	case "payload":
		start := s.i
		if err := s.skip(1); err != nil {
			return err
		}
		e.Payload = append(e.Payload[:0:0], s.b[start:s.i]...)
		return nil
	case "replay":
		switch c {
		case 't':
			e.Replay = true
			return s.literal("true")
		case 'f':
			e.Replay = false
			return s.literal("false")
		case 'n':
			return s.literal("null")
		}
		if err := s.skip(1); err != nil {
			return err
		}
		return typeError(name, "boolean")
	case "headers":
		return s.headers(e)
	}
	switch c {
	case 'n':
		return s.literal("null")
	case '"':
	default:
		if err := s.skip(1); err != nil {
			return err
		}
		return typeError(name, "string")
	}
	v, err := s.str()
	if err != nil {
		return err
	}
	switch name {
	case "eventName":
		e.EventName = v
	case "eventId":
		e.EventID = v
	case "publishedBy":
		e.PublishedBy = v
	case "publishedAt":
		e.PublishedAt = v
	case "correlationId":
		e.CorrelationID = v
	case "key":
		e.Key = v
	}
	return nil
}

// headers reads an object of strings into e.Headers; null clears it, and
// a repeated headers key adds to the map, as json.Unmarshal does.
func (s *scanner) headers(e *Envelope) error {
	switch s.b[s.i] {
	case 'n':
		e.Headers = nil
		return s.literal("null")
	case '{':
	default:
		if err := s.skip(1); err != nil {
			return err
		}
		return typeError("headers", "object")
	}
	if e.Headers == nil {
		e.Headers = map[string]string{}
	}
	return s.members(true, func(k []byte) error {
		if s.i >= len(s.b) {
			return errEOF
		}
		switch s.b[s.i] {
		case '"':
			v, err := s.str()
			if err != nil {
				return err
			}
			e.Headers[string(k)] = v
		case 'n':
			if err := s.literal("null"); err != nil {
				return err
			}
			e.Headers[string(k)] = ""
		default:
			if err := s.skip(2); err != nil {
				return err
			}
			return typeError("headers", "string")
		}
		return nil
	})
}
