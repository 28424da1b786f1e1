/*
 * rtpload: RTP load generator for the media relay benchmark (bench/media_bench.py).
 *
 * For N calls it opens 2N UDP sockets on 127.0.0.1 (party A and party B of
 * each call). Every socket sends a 172-byte RTP packet (12-byte header, 160
 * bytes of PCMU payload) every 20 ms to its call's relay port; the 2N streams
 * are spread evenly over the 20 ms (stream j is due j/2N of a period after
 * stream 0), so the relay sees a steady 100 packets per second per call, not
 * bursts (at most the packets due within one 100 us tick leave together).
 * Every packet carries its send time (CLOCK_MONOTONIC and CLOCK_REALTIME), its
 * stream and its number in the payload; the receiving socket checks that it
 * came from the other party of the same call, and counts it once. The result
 * is one JSON object on stdout: sent, received and lost per direction,
 * latency percentiles (one-way, through the relay, same host), how late the
 * sender ran behind its schedule (if it did, the generator and not the relay
 * was the limit), and the generator's own CPU time.
 *
 * Latency: "latency_us" is the kernel's receive time of the packet
 * (SO_TIMESTAMPNS, taken when the relay's send reaches our socket) minus its
 * send time; both on the realtime clock, the only one the kernel stamps
 * with, so the generator's own scheduling is left out. "latency_user_us" is
 * CLOCK_MONOTONIC when the generator read the packet minus the monotonic send
 * time: that adds up to one tick of the generator's wait.
 *
 * The loop wakes once per tick (--tick-us): sends what is due, then reads
 * every socket that has something. Packets do not wake it: at 100,000
 * packets per second, a wake-up per packet would cost the generator more than
 * the packets themselves.
 *
 * Usage:
 *   rtpload --targets FILE [options]        relay ports from FILE, then send
 *   rtpload --calls N --ports-out FILE --targets FILE [options]
 *       bind first, write the generator's own ports to FILE ("A B" per call,
 *       written whole through a rename), wait for a line on stdin, then read
 *       the targets file and send (the driver sets the relay up in between)
 *   rtpload --calls N --self [options]      every A sends straight to its
 *       call's B and back: the generator's own ceiling, and the latency floor
 *
 * The targets file has one line per call: "A_TARGET_PORT B_TARGET_PORT", the
 * port party A sends to and the port party B sends to (both on --host).
 *
 * Options: --duration S (20), --warmup S (2; sent, not counted), --drain S
 * (1; receive after the last send), --pps P (50 per stream), --host ADDR
 * (127.0.0.1), --tick-us U (100: how often the loop wakes; packets due within
 * one tick go out together), --rcvbuf BYTES (0: the system default),
 * --ready-timeout S (120: how long to wait for the go).
 *
 * Build: gcc -O2 -Wall -o rtpload bench/rtpload.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RTP_HEADER 12
#define PAYLOAD 160
#define PACKET (RTP_HEADER + PAYLOAD)
#define MAGIC 0x52544c44u /* "RTLD": our packets, not someone else's */
/* Payload layout after the magic: monotonic send time (u64), stream (u32),
 * packet number (u32), counted flag (u8), padding, realtime send time (u64). */
#define P_MONO 4
#define P_STREAM 12
#define P_NUMBER 16
#define P_COUNTED 20
#define P_REAL 24
#define HIST_US 1000000   /* latency histogram: 1 us buckets up to 1 s */
#define BATCH 16
#define SEND_BATCH 512
#define EVENTS 256

struct stream {
    int fd;
    uint16_t local_port;
    struct sockaddr_in target; /* where this party sends */
    uint32_t ssrc;
    uint16_t seq0;
    uint32_t ts0;
    /* receive side: packets from the other party of the call */
    uint64_t received;
    uint64_t duplicates;
    uint64_t reordered;
    int64_t highest; /* highest packet number received, -1: none */
    uint8_t *seen;   /* one bit per packet number */
};

struct direction {
    uint64_t sent, send_errors, received;
};

static struct stream *streams;
static uint32_t nstreams;
static uint64_t packets_per_stream; /* scheduled, warm-up included */
static uint64_t warmup_packets;     /* per stream, not counted */
struct latency {
    uint32_t *hist; /* 1 us buckets */
    uint64_t over, count, max_ns, sum_ns;
};

static struct latency lat_kernel, lat_user;
static uint64_t no_timestamp;
static uint64_t misrouted, malformed, foreign, uncounted_rx;
static struct direction dir[2]; /* 0: A->B, 1: B->A (by sender) */
static volatile sig_atomic_t interrupted;

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("rtpload: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_signal(int sig) {
    (void)sig;
    interrupted = 1;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put64(uint8_t *p, uint64_t v) {
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static uint64_t get64(const uint8_t *p) {
    return (uint64_t)get32(p) << 32 | get32(p + 4);
}

static uint32_t rand32(void) {
    static uint64_t x = 0;
    if (!x)
        x = now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return (uint32_t)x;
}

static void raise_fd_limit(uint32_t need) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        die("getrlimit: %s", strerror(errno));
    if (rl.rlim_cur >= need + 64)
        return;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need + 64)
        die("%u sockets need more files than the hard limit (%llu)", need, (unsigned long long)rl.rlim_max);
    rl.rlim_cur = need + 64;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        die("setrlimit: %s", strerror(errno));
}

static void open_streams(uint32_t calls, const char *host, int rcvbuf, int epfd) {
    nstreams = 2 * calls;
    streams = calloc(nstreams, sizeof *streams);
    if (!streams)
        die("out of memory");
    raise_fd_limit(nstreams);
    for (uint32_t j = 0; j < nstreams; j++) {
        struct stream *s = &streams[j];
        s->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s->fd < 0)
            die("socket: %s", strerror(errno));
        if (rcvbuf > 0 && setsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) != 0)
            die("SO_RCVBUF: %s", strerror(errno));
        int on = 1;
        if (setsockopt(s->fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) != 0)
            die("SO_TIMESTAMPNS: %s", strerror(errno));
        struct sockaddr_in a = {.sin_family = AF_INET};
        if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
            die("--host %s is not an IPv4 address", host);
        if (bind(s->fd, (struct sockaddr *)&a, sizeof a) != 0)
            die("bind %s: %s", host, strerror(errno));
        socklen_t len = sizeof a;
        getsockname(s->fd, (struct sockaddr *)&a, &len);
        s->local_port = ntohs(a.sin_port);
        s->ssrc = rand32();
        s->seq0 = (uint16_t)rand32();
        s->ts0 = rand32();
        s->highest = -1;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = j};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev) != 0)
            die("epoll_ctl: %s", strerror(errno));
    }
}

static void write_ports(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        die("%s: %s", tmp, strerror(errno));
    for (uint32_t j = 0; j < nstreams; j += 2)
        fprintf(f, "%u %u\n", streams[j].local_port, streams[j + 1].local_port);
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        die("%s: %s", path, strerror(errno));
}

static void wait_for_go(double timeout_s) {
    struct pollfd p = {.fd = 0, .events = POLLIN};
    int r = poll(&p, 1, (int)(timeout_s * 1000));
    if (r == 0)
        die("no go on stdin within %.0f s", timeout_s);
    if (r < 0)
        die("poll stdin: %s", strerror(errno));
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        die("stdin closed before go");
}

/* Reads "A_PORT B_PORT" lines into the streams' targets (expect > 0: that many
 * calls were bound), or only counts them (expect == 0); returns the count. */
static uint32_t read_targets(const char *path, const char *host, uint32_t expect) {
    FILE *f = fopen(path, "r");
    if (!f)
        die("%s: %s", path, strerror(errno));
    struct in_addr addr;
    if (inet_pton(AF_INET, host, &addr) != 1)
        die("--host %s is not an IPv4 address", host);
    char line[256];
    uint32_t call = 0, lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '#' || *p == '\n' || *p == '\0')
            continue;
        unsigned a, b;
        char extra;
        if (sscanf(p, "%u %u %c", &a, &b, &extra) != 2 || !a || !b || a > 65535 || b > 65535)
            die("%s line %u: expected two ports, got: %s", path, lineno, line);
        if (expect) {
            if (call >= expect)
                die("%s lists more than the %u calls bound", path, expect);
            for (int side = 0; side < 2; side++) {
                struct sockaddr_in *t = &streams[2 * call + side].target;
                t->sin_family = AF_INET;
                t->sin_addr = addr;
                t->sin_port = htons(side ? b : a);
            }
        }
        call++;
    }
    fclose(f);
    if (!call)
        die("%s lists no call", path);
    if (expect && call != expect)
        die("%s lists %u calls, %u were bound", path, call, expect);
    if (call > 9000)
        die("%s lists %u calls, at most 9000", path, call);
    return call;
}

static void set_self_targets(const char *host) {
    struct in_addr addr;
    inet_pton(AF_INET, host, &addr);
    for (uint32_t j = 0; j < nstreams; j++) {
        struct sockaddr_in *t = &streams[j].target;
        t->sin_family = AF_INET;
        t->sin_addr = addr;
        t->sin_port = htons(streams[j ^ 1].local_port);
    }
}

static void alloc_receive_state(void) {
    size_t bytes = (packets_per_stream + 7) / 8;
    uint8_t *bits = calloc(nstreams, bytes);
    if (!bits)
        die("out of memory");
    for (uint32_t j = 0; j < nstreams; j++)
        streams[j].seen = bits + (size_t)j * bytes;
    lat_kernel.hist = calloc(HIST_US, sizeof *lat_kernel.hist);
    lat_user.hist = calloc(HIST_US, sizeof *lat_user.hist);
    if (!lat_kernel.hist || !lat_user.hist)
        die("out of memory");
}

static void send_packet(uint32_t j, uint64_t k, uint8_t *buf) {
    struct stream *s = &streams[j];
    buf[0] = 0x80;
    buf[1] = 0; /* PCMU, no marker */
    buf[2] = (uint8_t)((s->seq0 + k) >> 8);
    buf[3] = (uint8_t)(s->seq0 + k);
    put32(buf + 4, s->ts0 + (uint32_t)(k * PAYLOAD));
    put32(buf + 8, s->ssrc);
    uint8_t *p = buf + RTP_HEADER;
    put32(p, MAGIC);
    put32(p + P_STREAM, j);
    put32(p + P_NUMBER, (uint32_t)k);
    p[P_COUNTED] = k >= warmup_packets;
    put64(p + P_REAL, real_ns());
    put64(p + P_MONO, now_ns());
    ssize_t r = sendto(s->fd, buf, PACKET, 0, (struct sockaddr *)&s->target, sizeof s->target);
    if (k < warmup_packets)
        return;
    struct direction *d = &dir[j & 1];
    d->sent++;
    if (r != PACKET)
        d->send_errors++;
}

static void record(struct latency *l, uint64_t sent, uint64_t received) {
    uint64_t lat = received > sent ? received - sent : 0;
    uint64_t us = lat / 1000;
    if (us < HIST_US)
        l->hist[us]++;
    else
        l->over++;
    l->count++;
    l->sum_ns += lat;
    if (lat > l->max_ns)
        l->max_ns = lat;
}

/* One datagram read from stream j's socket; kernel_ns: its receive stamp (0: none). */
static void receive_one(uint32_t j, const uint8_t *buf, ssize_t len, const struct sockaddr_in *from, uint64_t t,
                        uint64_t kernel_ns) {
    const uint8_t *p = buf + RTP_HEADER;
    if (len != PACKET || (buf[0] & 0xc0) != 0x80 || get32(p) != MAGIC) {
        malformed++;
        return;
    }
    uint32_t src = get32(p + P_STREAM);
    uint64_t k = get32(p + P_NUMBER);
    if (src != (j ^ 1) || k >= packets_per_stream) {
        misrouted++;
        return;
    }
    struct stream *s = &streams[j];
    if (from->sin_port != s->target.sin_port || from->sin_addr.s_addr != s->target.sin_addr.s_addr)
        foreign++; /* not symmetric: answered from another address than the one we send to */
    if (!p[P_COUNTED]) {
        uncounted_rx++;
        return;
    }
    uint8_t bit = (uint8_t)(1u << (k & 7));
    if (s->seen[k >> 3] & bit) {
        s->duplicates++;
        return;
    }
    s->seen[k >> 3] |= bit;
    s->received++;
    dir[src & 1].received++;
    if ((int64_t)k < s->highest)
        s->reordered++;
    else
        s->highest = (int64_t)k;
    record(&lat_user, get64(p + P_MONO), t);
    if (kernel_ns)
        record(&lat_kernel, get64(p + P_REAL), kernel_ns);
    else
        no_timestamp++;
}

static uint64_t rx_calls, rx_batches;

/* When packet g of all streams together is due: start + g * period / nstreams. */
static uint64_t due_at(uint64_t start, uint64_t g, uint64_t period_ns) {
    return start + (uint64_t)((double)g * (double)period_ns / (double)nstreams);
}

static void drain_socket(uint32_t j) {
    static uint8_t bufs[BATCH][2048];
    static uint8_t controls[BATCH][CMSG_SPACE(sizeof(struct timespec))];
    static struct sockaddr_in names[BATCH];
    static struct iovec iov[BATCH];
    static struct mmsghdr msgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof bufs[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            msgs[i].msg_hdr.msg_name = &names[i];
            msgs[i].msg_hdr.msg_namelen = sizeof names[i];
            msgs[i].msg_hdr.msg_control = controls[i];
            msgs[i].msg_hdr.msg_controllen = sizeof controls[i];
        }
        int n = recvmmsg(streams[j].fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        rx_calls++;
        if (n <= 0)
            return;
        rx_batches++;
        uint64_t t = now_ns();
        for (int i = 0; i < n; i++) {
            uint64_t kernel_ns = 0;
            struct msghdr *h = &msgs[i].msg_hdr;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec ts;
                    memcpy(&ts, CMSG_DATA(c), sizeof ts);
                    kernel_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
                }
            }
            receive_one(j, bufs[i], msgs[i].msg_len, &names[i], t, kernel_ns);
        }
        if (n < BATCH)
            return;
    }
}

static uint64_t percentile(const struct latency *l, double q) {
    if (!l->count)
        return 0;
    uint64_t want = (uint64_t)(q * (double)l->count);
    if (want >= l->count)
        want = l->count - 1;
    uint64_t acc = 0;
    for (uint32_t us = 0; us < HIST_US; us++) {
        acc += l->hist[us];
        if (acc > want)
            return us;
    }
    return l->max_ns / 1000;
}

static void print_latency(const char *name, const struct latency *l) {
    printf("\"%s\": {\"p50\": %" PRIu64 ", \"p90\": %" PRIu64 ", \"p99\": %" PRIu64 ", \"p999\": %" PRIu64
           ", \"max\": %.1f, \"mean\": %.1f, \"count\": %" PRIu64 ", \"over_1s\": %" PRIu64 "}, ",
           name, percentile(l, 0.5), percentile(l, 0.9), percentile(l, 0.99), percentile(l, 0.999),
           (double)l->max_ns / 1e3, l->count ? (double)l->sum_ns / (double)l->count / 1e3 : 0.0, l->count, l->over);
}

static double loss_pct(uint64_t sent, uint64_t received) {
    return sent ? 100.0 * (double)(sent - (received < sent ? received : sent)) / (double)sent : 0.0;
}

static void print_direction(const char *name, const struct direction *d) {
    uint64_t lost = d->sent > d->received ? d->sent - d->received : 0;
    printf("\"%s\": {\"sent\": %" PRIu64 ", \"send_errors\": %" PRIu64 ", \"received\": %" PRIu64
           ", \"lost\": %" PRIu64 ", \"loss_pct\": %.4f}",
           name, d->sent, d->send_errors, d->received, lost, loss_pct(d->sent, d->received));
}

static double usage_s(struct timeval tv) {
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void usage(void) {
    fputs("usage: rtpload (--targets FILE | --calls N --self | --calls N --ports-out FILE --targets FILE)\n"
          "               [--duration S] [--warmup S] [--drain S] [--pps P] [--host ADDR]\n"
          "               [--tick-us U] [--rcvbuf BYTES] [--ready-timeout S]\n",
          stderr);
    exit(2);
}

static double number_arg(const char *name, const char *value, double low, double high) {
    char *end;
    double v = strtod(value, &end);
    if (*value == '\0' || *end != '\0' || v < low || v > high)
        die("%s %s: expected a number from %g to %g", name, value, low, high);
    return v;
}

int main(int argc, char **argv) {
    const char *targets = NULL, *ports_out = NULL, *host = "127.0.0.1";
    double duration = 20, warmup = 2, drain = 1, pps = 50, ready_timeout = 120;
    uint32_t calls = 0;
    int self = 0, rcvbuf = 0;
    uint64_t tick_ns = 100000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--self")) {
            self = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            usage();
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--targets")) targets = v;
        else if (!strcmp(a, "--ports-out")) ports_out = v;
        else if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--calls")) calls = (uint32_t)number_arg(a, v, 1, 9000);
        else if (!strcmp(a, "--duration")) duration = number_arg(a, v, 0.1, 3600);
        else if (!strcmp(a, "--warmup")) warmup = number_arg(a, v, 0, 600);
        else if (!strcmp(a, "--drain")) drain = number_arg(a, v, 0, 60);
        else if (!strcmp(a, "--pps")) pps = number_arg(a, v, 1, 10000);
        else if (!strcmp(a, "--tick-us")) tick_ns = (uint64_t)number_arg(a, v, 1, 100000) * 1000;
        else if (!strcmp(a, "--rcvbuf")) rcvbuf = (int)number_arg(a, v, 0, 1 << 30);
        else if (!strcmp(a, "--ready-timeout")) ready_timeout = number_arg(a, v, 1, 3600);
        else die("unknown option %s", a);
    }
    if (self ? (!calls || targets || ports_out) : ports_out ? (!calls || !targets) : !targets)
        usage();
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* 1 us: wake when a send is due, not 50 us later */
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);

    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    if (self) {
        open_streams(calls, host, rcvbuf, epfd);
        set_self_targets(host);
    } else if (ports_out) {
        open_streams(calls, host, rcvbuf, epfd);
        write_ports(ports_out);
        wait_for_go(ready_timeout);
        read_targets(targets, host, calls);
    } else {
        calls = read_targets(targets, host, 0);
        open_streams(calls, host, rcvbuf, epfd);
        read_targets(targets, host, calls);
    }

    uint64_t period_ns = (uint64_t)(1e9 / pps);
    packets_per_stream = (uint64_t)((warmup + duration) * pps + 0.5);
    warmup_packets = (uint64_t)(warmup * pps + 0.5);
    alloc_receive_state();

    /* Packet g (all streams together) is due at start + g * period / nstreams:
     * stream g % nstreams, its packet number g / nstreams. */
    uint64_t total = packets_per_stream * nstreams;
    uint8_t buf[PACKET];
    memset(buf + RTP_HEADER, 0xff, PAYLOAD); /* PCMU silence */
    struct epoll_event events[EVENTS];
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    uint64_t start = now_ns() + 1000000, next = 0, lag_max = 0, lag_over_1ms = 0, lag_sum = 0;
    uint64_t end_send = start + (uint64_t)((double)packets_per_stream * (double)period_ns);
    /* A generator that cannot keep up falls further behind all the time: its
     * lag over the last second of sending tells it from one that was only
     * held up now and then (another process's time slice). */
    uint64_t tail_from = end_send > start + 1000000000ull ? end_send - 1000000000ull : start, lag_tail_max = 0;
    uint64_t deadline = end_send + (uint64_t)(drain * 1e9), wakeups = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (interrupted || t >= deadline)
            break;
        if (next < total && t >= start) {
            uint64_t due = (uint64_t)((double)(t - start) * (double)nstreams / (double)period_ns) + 1;
            if (due > total)
                due = total;
            /* At most a batch at a time: an overloaded generator still receives. */
            if (due > next + SEND_BATCH)
                due = next + SEND_BATCH;
            for (; next < due; next++) {
                uint64_t k = next / nstreams;
                uint64_t at = due_at(start, next, period_ns);
                uint64_t lag = now_ns() - at;
                if (at >= tail_from && lag > lag_tail_max)
                    lag_tail_max = lag;
                if (k >= warmup_packets) {
                    if (lag > lag_max)
                        lag_max = lag;
                    lag_sum += lag;
                    lag_over_1ms += lag > 1000000;
                }
                send_packet((uint32_t)(next % nstreams), k, buf);
            }
        }
        /* Read every socket that has something, without waiting. */
        int n = epoll_wait(epfd, events, EVENTS, 0);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++)
            drain_socket(events[i].data.u32);
        if (n == EVENTS)
            continue; /* more sockets to read: no sleep */
        /* Sleep one tick: what falls due meanwhile goes out at the next wake
         * (at most a tick late; each packet carries its real send time). */
        t = now_ns();
        uint64_t wake = t + tick_ns;
        if (t < start && start < wake)
            wake = start;
        if (deadline < wake)
            wake = deadline;
        struct timespec until = {.tv_sec = (time_t)(wake / 1000000000ull), .tv_nsec = (long)(wake % 1000000000ull)};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
        wakeups++;
    }
    uint64_t finished = now_ns();
    getrusage(RUSAGE_SELF, &ru1);

    uint64_t streams_with_loss = 0, streams_silent = 0, worst_lost = 0, duplicates = 0, reordered = 0;
    uint64_t counted = packets_per_stream - warmup_packets;
    for (uint32_t j = 0; j < nstreams; j++) {
        struct stream *s = &streams[j];
        /* stream j receives what stream j^1 sent */
        uint64_t lost = counted > s->received ? counted - s->received : 0;
        streams_with_loss += lost > 0;
        streams_silent += s->received == 0;
        if (lost > worst_lost)
            worst_lost = lost;
        duplicates += s->duplicates;
        reordered += s->reordered;
    }
    struct direction all = {dir[0].sent + dir[1].sent, dir[0].send_errors + dir[1].send_errors,
                            dir[0].received + dir[1].received};
    double wall = (double)(finished - start) / 1e9;
    uint64_t sent_counted = all.sent;
    printf("{\"mode\": \"%s\", \"calls\": %u, \"streams\": %u, \"pps_per_stream\": %g, "
           "\"offered_pps\": %.0f, \"duration_s\": %g, \"warmup_s\": %g, \"drain_s\": %g, "
           "\"interrupted\": %s, ",
           self ? "self" : "relay", nstreams / 2, nstreams, pps, pps * nstreams, duration, warmup, drain,
           interrupted ? "true" : "false");
    print_direction("a_to_b", &dir[0]);
    printf(", ");
    print_direction("b_to_a", &dir[1]);
    printf(", ");
    print_direction("total", &all);
    printf(", \"streams_with_loss\": %" PRIu64 ", \"streams_silent\": %" PRIu64
           ", \"worst_stream_lost\": %" PRIu64 ", \"duplicates\": %" PRIu64 ", \"reordered\": %" PRIu64
           ", \"misrouted\": %" PRIu64 ", \"malformed\": %" PRIu64 ", \"foreign_source\": %" PRIu64
           ", \"warmup_received\": %" PRIu64 ", ",
           streams_with_loss, streams_silent, worst_lost, duplicates, reordered, misrouted, malformed, foreign,
           uncounted_rx);
    print_latency("latency_us", &lat_kernel);
    print_latency("latency_user_us", &lat_user);
    printf("\"no_kernel_timestamp\": %" PRIu64 ", ", no_timestamp);
    printf("\"send_lag_us\": {\"max\": %.1f, \"mean\": %.1f, \"over_1ms\": %" PRIu64 ", \"last_second_max\": %.1f}, ",
           (double)lag_max / 1e3, sent_counted ? (double)lag_sum / (double)sent_counted / 1e3 : 0.0, lag_over_1ms,
           (double)lag_tail_max / 1e3);
    printf("\"send_pps\": %.0f, \"receive_pps\": %.0f, \"wakeups\": %" PRIu64 ", \"recvmmsg_calls\": %" PRIu64
           ", \"recvmmsg_batches\": %" PRIu64 ", ",
           (double)sent_counted / duration, (double)all.received / duration,
           wakeups, rx_calls, rx_batches);
    double user = usage_s(ru1.ru_utime) - usage_s(ru0.ru_utime);
    double sys = usage_s(ru1.ru_stime) - usage_s(ru0.ru_stime);
    printf("\"cpu_s\": {\"user\": %.3f, \"system\": %.3f}, \"cpu_pct\": %.1f, \"wall_s\": %.3f}\n", user, sys,
           100 * (user + sys) / wall, wall);
    return interrupted ? 3 : 0;
}
