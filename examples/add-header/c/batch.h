/* Reading and writing wit/BATCH-FORMAT.md (flowgate:transform@0.2.0) in C:
 * what the Rust, Python and JavaScript helpers do for their plugins. A
 * plugin in C gets the whole batch as bytes and answers with bytes. */
#ifndef FLOWGATE_BATCH_H
#define FLOWGATE_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A slice of the input: pointers into the batch, never copied. */
typedef struct {
    const uint8_t *ptr;
    size_t len;
} fg_bytes;

typedef struct {
    fg_bytes name, value;
} fg_header;

/* One input record. Its metadata is skipped: the host keeps it. */
typedef struct {
    bool has_key, has_timestamp;
    fg_bytes key, value;
    int64_t timestamp;
    uint16_t header_count;
    /* The headers' bytes, read one after the other with fg_next_header. */
    const uint8_t *headers, *headers_end;
} fg_record;

/* Reads the input; `bad` is set when it runs past the end (never, from the host). */
typedef struct {
    const uint8_t *at, *end;
    bool bad;
} fg_reader;

static inline const uint8_t *fg_take(fg_reader *r, size_t n) {
    if ((size_t)(r->end - r->at) < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->at;
    r->at += n;
    return p;
}

static inline uint64_t fg_uint(fg_reader *r, size_t n) {
    const uint8_t *p = fg_take(r, n);
    uint64_t v = 0;
    for (size_t i = 0; p && i < n; i++) v |= (uint64_t)p[i] << (8 * i); /* little-endian */
    return v;
}

static inline fg_bytes fg_bytes32(fg_reader *r) {
    size_t n = (size_t)fg_uint(r, 4);
    const uint8_t *p = fg_take(r, n);
    return (fg_bytes){p, p ? n : 0};
}

/* The next record of the batch. */
static inline fg_record fg_next_record(fg_reader *r) {
    fg_record rec = {0};
    uint8_t flags = (uint8_t)fg_uint(r, 1);
    rec.has_key = flags & 1;
    rec.has_timestamp = flags & 2;
    if (rec.has_key) rec.key = fg_bytes32(r);
    rec.value = fg_bytes32(r);
    if (rec.has_timestamp) rec.timestamp = (int64_t)fg_uint(r, 8);
    rec.header_count = (uint16_t)fg_uint(r, 2);
    rec.headers = r->at;
    for (uint16_t i = 0; i < rec.header_count; i++) {
        fg_take(r, (size_t)fg_uint(r, 2));
        fg_bytes32(r);
    }
    rec.headers_end = r->at;
    uint8_t fields = (uint8_t)fg_uint(r, 1);
    for (uint8_t i = 0; i < fields && !r->bad; i++) {
        fg_take(r, (size_t)fg_uint(r, 1)); /* its name */
        uint8_t type = (uint8_t)fg_uint(r, 1);
        if (type == 0) fg_take(r, 8);        /* INT */
        else if (type == 1) fg_bytes32(r);   /* TEXT */
        else r->bad = true;                  /* a type this plugin does not know */
    }
    return rec;
}

/* A reader over a record's headers: fg_next_header gives them in order. */
static inline fg_reader fg_headers(const fg_record *rec) {
    return (fg_reader){rec->headers, rec->headers_end, false};
}

static inline fg_header fg_next_header(fg_reader *r) {
    size_t n = (size_t)fg_uint(r, 2);
    const uint8_t *name = fg_take(r, n);
    fg_header h = {{name, name ? n : 0}, fg_bytes32(r)};
    return h;
}

/* The answer, grown as it is written; handed to the host, which frees it. */
typedef struct {
    uint8_t *ptr;
    size_t len, cap;
} fg_writer;

static inline void fg_put(fg_writer *w, const void *p, size_t n) {
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 4096;
        while (cap < w->len + n) cap *= 2;
        w->ptr = realloc(w->ptr, cap);
        if (!w->ptr) abort(); /* out of memory: the host sees a trap */
        w->cap = cap;
    }
    memcpy(w->ptr + w->len, p, n);
    w->len += n;
}

static inline void fg_put_uint(fg_writer *w, uint64_t v, size_t n) {
    uint8_t b[8];
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(v >> (8 * i));
    fg_put(w, b, n);
}

static inline void fg_put_bytes32(fg_writer *w, fg_bytes b) {
    fg_put_uint(w, b.len, 4);
    fg_put(w, b.ptr, b.len);
}

enum { FG_KEEP = 0, FG_EMIT = 1, FG_FAIL = 2, FG_VALUE = 3 };

/* The start of outcome `index`: every outcome names the record it answers. */
static inline void fg_put_outcome(fg_writer *w, uint32_t index, uint8_t tag) {
    fg_put_uint(w, index, 4);
    fg_put_uint(w, tag, 1);
}

#endif
