/* medu_walk: a seeded random walk over the type1 uAPI with a mediated edu
 * device (Linux's medu, softvfio's mdev-edu), printing one line per step.
 *
 * usage: medu_walk /dev/vfio/<group> <device name> <seed> <steps>
 *
 * Why it looks the way it does:
 * - The sequence of operations and their arguments is a function of the seed
 *   alone (splitmix64), never of an earlier answer: when two implementations
 *   disagree on one step, the following lines still describe the same
 *   requests, so a line-by-line diff counts each disagreement where it is.
 * - Nothing printed depends on where things live in this process: user
 *   addresses are printed as page offsets within the walk's own buffer,
 *   device-written bytes as (count, span, hash of the span) of what changed
 *   in that buffer, bytes the device read as a hash of what it gives back.
 * - The IOVA window (96 pages at 0x100000) is small so that maps overlap,
 *   unmaps split and span, and DMA hits mapped, unmapped, read-only and
 *   write-only IOVAs often. A scratch page at SCRATCH_IOVA (mapped RW at the
 *   start and after every unmap-all) receives the device buffer back after a
 *   device read, which is how the walk sees what the device read.
 * - The buffer: pages [0,128) RW, [128,144) read-only, [144,160) PROT_NONE,
 *   so that maps naming memory the device cannot pin exist too.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096ull
#define BUF_PAGES 160
#define RW_PAGES 128
#define RO_PAGES 16
#define WIN_IOVA 0x100000ull
#define WIN_PAGES 96
#define SCRATCH_IOVA 0xff00000ull
#define DEV_BUF 0x40000ull
#define BUF_HINT ((void *)0x5a0000000000ull)
#define SCRATCH_HINT ((void *)0x5b0000000000ull)
#define MAX_MAPS 512

static int container, group, devfd;
static uint64_t bar0;
static uint8_t *buf, *shadow, *scratch;
static uint64_t rng;
static int step;

static uint64_t next(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* uniform-enough in [0, n) */
static uint64_t pick(uint64_t n) { return n ? next() % n : 0; }

static const char *ename(int e)
{
	static char b[16];
	switch (e) {
	case 0: return "ok";
	case EINVAL: return "EINVAL";
	case EBUSY: return "EBUSY";
	case EFAULT: return "EFAULT";
	case EPERM: return "EPERM";
	case EEXIST: return "EEXIST";
	case ENOENT: return "ENOENT";
	case ENOSPC: return "ENOSPC";
	case ENOMEM: return "ENOMEM";
	case ENOTTY: return "ENOTTY";
	case ENODEV: return "ENODEV";
	case E2BIG: return "E2BIG";
	case ERANGE: return "ERANGE";
	case ENXIO: return "ENXIO";
	case EOVERFLOW: return "EOVERFLOW";
	case EAGAIN: return "EAGAIN";
	}
	snprintf(b, sizeof b, "E%d", e);
	return b;
}

static uint64_t hash(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

/* A user address as the walk prints it: an offset in pages (and bytes) of buf. */
static uint64_t va(uint64_t page, uint64_t byte) { return (uint64_t)(uintptr_t)buf + page * PAGE + byte; }

/* Maps the walk asked for (whatever the answer): unmaps and dirty queries pick from them. */
static struct { uint64_t iova, size; } maps[MAX_MAPS];
static int nmaps;

static void remember(uint64_t iova, uint64_t size)
{
	if (nmaps == MAX_MAPS) {
		memmove(maps, maps + 1, sizeof(maps[0]) * (MAX_MAPS - 1));
		nmaps--;
	}
	maps[nmaps].iova = iova;
	maps[nmaps].size = size;
	nmaps++;
}

static const char *prot_name(uint32_t f)
{
	switch (f & 3) {
	case 0: return "-";
	case 1: return "R";
	case 2: return "W";
	}
	return "RW";
}

static int do_map(uint32_t flags, uint64_t vaddr, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = flags, .vaddr = vaddr, .iova = iova, .size = size };
	return ioctl(container, VFIO_IOMMU_MAP_DMA, &m) ? errno : 0;
}

static void print_bitmap(const uint64_t *bm, uint64_t words)
{
	printf(" bitmap=");
	for (uint64_t i = 0; i < words; i++)
		printf("%s%016llx", i ? "." : "", (unsigned long long)bm[i]);
}

static void vmlck(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	const char *v = "?";
	if (f) {
		while (fgets(line, sizeof line, f))
			if (!strncmp(line, "VmLck:", 6)) {
				char *p = line + 6;
				while (*p == ' ' || *p == '\t')
					p++;
				p[strcspn(p, "\n")] = 0;
				v = p;
				break;
			}
		printf("%03d vmlck %s\n", step, v);
		fclose(f);
	} else {
		printf("%03d vmlck ?\n", step);
	}
}

static void op_map(void)
{
	static const uint32_t prots[] = { 1, 2, 3, 3, 3, 1 };
	uint32_t flags = prots[pick(6)];
	uint64_t vpage = pick(RW_PAGES - 16), vbyte = 0;
	uint64_t ipage = pick(WIN_PAGES), size = (1 + pick(16)) * PAGE;
	uint64_t iova = WIN_IOVA + ipage * PAGE;
	const char *kind = "ok";
	switch (pick(20)) {
	case 0: vbyte = 512; kind = "vaddr-unaligned"; break;
	case 1: size += 100; kind = "size-unaligned"; break;
	case 2: size = 0; kind = "size-zero"; break;
	case 3: iova += 8; kind = "iova-unaligned"; break;
	case 4: flags = 0; kind = "no-prot"; break;
	case 5: flags |= 1u << 7; kind = "bad-flag"; break;
	case 6: iova = ~0ull - PAGE + 1; kind = "iova-wrap"; break;
	case 7: vpage = RW_PAGES + pick(RO_PAGES - 4); kind = "ro-memory"; break;
	case 8: vpage = RW_PAGES + RO_PAGES + pick(12); kind = "none-memory"; break;
	case 9: iova = 0x10000000ull + ipage * PAGE; kind = "above-dma-mask"; break;
	}
	if (size && !vbyte && vpage * PAGE + size > BUF_PAGES * PAGE)
		size = (BUF_PAGES - vpage) * PAGE;
	int r = do_map(flags, va(vpage, vbyte), iova, size);
	if ((flags & ~3u) == 0 && flags)
		remember(iova, size);
	printf("%03d map %s %s vpage=%llu+%llu iova=%#llx size=%#llx -> %s\n", step, kind, prot_name(flags),
	       (unsigned long long)vpage, (unsigned long long)vbyte, (unsigned long long)iova,
	       (unsigned long long)size, ename(r));
}

/* An IOVA range for unmap / dirty queries: exact, partial, spanning or random. */
static const char *pick_range(uint64_t *iova, uint64_t *size)
{
	uint64_t k = pick(10);
	if (nmaps && k < 5) {
		int i = pick(nmaps);
		*iova = maps[i].iova;
		*size = maps[i].size;
		return "exact";
	}
	if (nmaps && k < 7) {
		int i = pick(nmaps);
		uint64_t pages = maps[i].size / PAGE;
		uint64_t off = pick(pages ? pages : 1);
		*iova = maps[i].iova + off * PAGE;
		*size = (1 + pick(pages > off ? pages - off : 1)) * PAGE;
		return "partial";
	}
	if (k < 9) {
		uint64_t a = pick(WIN_PAGES), n = 1 + pick(WIN_PAGES - a);
		*iova = WIN_IOVA + a * PAGE;
		*size = n * PAGE;
		return "span";
	}
	switch (pick(3)) {
	case 0: *iova = WIN_IOVA + 4; *size = PAGE; return "iova-unaligned";
	case 1: *iova = WIN_IOVA; *size = PAGE + 1; return "size-unaligned";
	}
	*iova = WIN_IOVA; *size = 0;
	return "size-zero";
}

static void op_unmap(int with_dirty)
{
	uint64_t iova, size;
	const char *kind = pick_range(&iova, &size);
	struct {
		struct vfio_iommu_type1_dma_unmap u;
		struct vfio_bitmap b;
	} a;
	static uint64_t bm[WIN_PAGES * 4 / 64 + 8];
	uint64_t words = ((size / PAGE) + 63) / 64;
	if (words > sizeof bm / 8)
		words = sizeof bm / 8;
	memset(&a, 0, sizeof a);
	memset(bm, 0, sizeof bm);
	a.u.argsz = with_dirty ? sizeof a : sizeof a.u;
	a.u.flags = with_dirty ? VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP : 0;
	a.u.iova = iova;
	a.u.size = size;
	a.b.pgsize = PAGE;
	a.b.size = words * 8;
	a.b.data = (void *)bm;
	int r = ioctl(container, VFIO_IOMMU_UNMAP_DMA, &a) ? errno : 0;
	printf("%03d unmap%s %s iova=%#llx size=%#llx -> %s", step, with_dirty ? "+dirty" : "", kind,
	       (unsigned long long)iova, (unsigned long long)size, ename(r));
	if (!r)
		printf(" unmapped=%#llx", (unsigned long long)a.u.size);
	if (!r && with_dirty)
		print_bitmap(bm, words);
	printf("\n");
}

static void map_scratch(void)
{
	int r = do_map(3, (uint64_t)(uintptr_t)scratch, SCRATCH_IOVA, PAGE);
	printf("%03d map-scratch iova=%#llx -> %s\n", step, SCRATCH_IOVA, ename(r));
}

static void op_unmap_all(void)
{
	int bad = pick(4) == 0;
	struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .flags = VFIO_DMA_UNMAP_FLAG_ALL,
						.iova = 0, .size = bad ? PAGE : 0 };
	int r = ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u) ? errno : 0;
	printf("%03d unmap-all%s -> %s", step, bad ? " size=0x1000" : "", ename(r));
	if (!r)
		printf(" unmapped=%#llx", (unsigned long long)u.size);
	printf("\n");
	if (!r)
		map_scratch();
}

static void op_vaddr_invalidate(void)
{
	uint64_t iova, size;
	const char *kind = pick_range(&iova, &size);
	uint32_t flags = VFIO_DMA_UNMAP_FLAG_VADDR;
	if (pick(5) == 0) {
		flags |= VFIO_DMA_UNMAP_FLAG_ALL;
		iova = 0;
		size = 0;
		kind = "all";
	}
	struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .flags = flags, .iova = iova, .size = size };
	int r = ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u) ? errno : 0;
	printf("%03d vaddr-invalidate %s iova=%#llx size=%#llx -> %s\n", step, kind, (unsigned long long)iova,
	       (unsigned long long)size, ename(r));
}

static void op_vaddr_update(void)
{
	uint64_t iova, size;
	const char *kind = pick_range(&iova, &size);
	uint64_t vpage = pick(RW_PAGES - 16);
	uint32_t flags = VFIO_DMA_MAP_FLAG_VADDR;
	if (pick(4) == 0) {
		flags |= VFIO_DMA_MAP_FLAG_READ;
		kind = "with-prot";
	}
	int r = do_map(flags, va(vpage, 0), iova, size);
	printf("%03d vaddr-update %s vpage=%llu iova=%#llx size=%#llx -> %s\n", step, kind,
	       (unsigned long long)vpage, (unsigned long long)iova, (unsigned long long)size, ename(r));
}

static void op_dirty_ctl(void)
{
	static const struct { uint32_t f; const char *n; } ops[] = {
		{ VFIO_IOMMU_DIRTY_PAGES_FLAG_START, "start" },
		{ VFIO_IOMMU_DIRTY_PAGES_FLAG_START, "start" },
		{ VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, "stop" },
		{ VFIO_IOMMU_DIRTY_PAGES_FLAG_START | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, "start+stop" },
	};
	int i = pick(4);
	struct vfio_iommu_type1_dirty_bitmap d = { .argsz = sizeof d, .flags = ops[i].f };
	int r = ioctl(container, VFIO_IOMMU_DIRTY_PAGES, &d) ? errno : 0;
	printf("%03d dirty-%s -> %s\n", step, ops[i].n, ename(r));
}

static void op_dirty_get(void)
{
	uint64_t iova, size;
	const char *kind = pick_range(&iova, &size);
	struct {
		struct vfio_iommu_type1_dirty_bitmap d;
		struct vfio_iommu_type1_dirty_bitmap_get g;
	} a;
	static uint64_t bm[WIN_PAGES * 4 / 64 + 8];
	uint64_t words = ((size / PAGE) + 63) / 64;
	uint64_t pgsize = PAGE;
	if (words > sizeof bm / 8)
		words = sizeof bm / 8;
	if (pick(8) == 0) {
		pgsize = 2 * PAGE;
		kind = "pgsize-8k";
	}
	memset(&a, 0, sizeof a);
	memset(bm, 0, sizeof bm);
	a.d.argsz = sizeof a;
	a.d.flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
	a.g.iova = iova;
	a.g.size = size;
	a.g.bitmap.pgsize = pgsize;
	a.g.bitmap.size = words * 8;
	a.g.bitmap.data = (void *)bm;
	int r = ioctl(container, VFIO_IOMMU_DIRTY_PAGES, &a) ? errno : 0;
	printf("%03d dirty-get %s iova=%#llx size=%#llx -> %s", step, kind, (unsigned long long)iova,
	       (unsigned long long)size, ename(r));
	if (!r)
		print_bitmap(bm, words);
	printf("\n");
}

static void op_get_info(void)
{
	static uint8_t b[4096];
	struct vfio_iommu_type1_info *info = (void *)b;
	memset(b, 0, sizeof b);
	info->argsz = pick(3) == 0 ? offsetof(struct vfio_iommu_type1_info, cap_offset) : sizeof b;
	int r = ioctl(container, VFIO_IOMMU_GET_INFO, info) ? errno : 0;
	printf("%03d get-info argsz=%u -> %s", step, info->argsz, ename(r));
	if (!r) {
		printf(" flags=%#x pgsizes=%#llx", info->flags, (unsigned long long)info->iova_pgsizes);
		if (info->argsz > offsetof(struct vfio_iommu_type1_info, cap_offset) &&
		    (info->flags & VFIO_IOMMU_INFO_CAPS)) {
			uint32_t off = info->cap_offset;
			printf(" caps=");
			for (int n = 0; off && off + sizeof(struct vfio_info_cap_header) <= sizeof b && n < 16; n++) {
				struct vfio_info_cap_header *h = (void *)(b + off);
				printf("%s%u/v%u", n ? "," : "", h->id, h->version);
				if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION) {
					struct vfio_iommu_type1_info_cap_migration *m = (void *)h;
					printf("(flags=%#x pgsizes=%#llx max=%#llx)", m->flags,
					       (unsigned long long)m->pgsize_bitmap,
					       (unsigned long long)m->max_dirty_bitmap_size);
				} else if (h->id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL) {
					struct vfio_iommu_type1_info_dma_avail *d = (void *)h;
					printf("(avail=%u)", d->avail);
				} else if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
					struct vfio_iommu_type1_info_cap_iova_range *ir = (void *)h;
					printf("(n=%u)", ir->nr_iovas);
				}
				off = h->next;
			}
		}
	}
	printf("\n");
}

static void wr64(unsigned off, uint64_t v)
{
	if (pwrite(devfd, &v, 8, bar0 + off) != 8)
		printf("%03d bar-write %#x -> %s\n", step, off, ename(errno));
}

static uint32_t rd32(unsigned off)
{
	uint32_t v = ~0u;
	if (pread(devfd, &v, 4, bar0 + off) != 4)
		return ~0u;
	return v;
}

/* Runs one edu DMA and waits for the engine; returns "done" or "timeout". */
static const char *edu_dma(uint64_t src, uint64_t dst, uint64_t cnt, int to_ram)
{
	wr64(0x80, src);
	wr64(0x88, dst);
	wr64(0x90, cnt);
	wr64(0x98, 1 | (to_ram ? 2 : 0));
	for (int i = 0; i < 200000; i++) {
		if (!(rd32(0x98) & 1))
			return "done";
		usleep(5);
	}
	return "timeout";
}

/* A DMA target: mostly inside a range the walk recently asked to map (chosen
 * from the requests, not the answers), else anywhere in the window; at a page start,
 * inside a page, across a page end, or above the 28-bit DMA mask (edu clamps). */
static uint64_t dma_iova(uint64_t *cnt, const char **kind)
{
	static const uint64_t counts[] = { 8, 64, 256, 4096, 1000, 3 };
	*cnt = counts[pick(6)];
	uint64_t iova = WIN_IOVA + pick(WIN_PAGES) * PAGE;
	if (nmaps && pick(100) < 65) {
		/* recent requests: the likeliest to be mapped still */
		int i = nmaps - 1 - (int)pick(nmaps < 4 ? nmaps : 4);
		uint64_t pages = maps[i].size / PAGE;
		iova = (maps[i].iova & ~(PAGE - 1)) + pick(pages ? (pages < 16 ? pages : 16) : 1) * PAGE;
	}
	*kind = "page";
	switch (pick(6)) {
	case 0: iova += PAGE - 16; *kind = "cross"; break;
	case 1: iova += 8 * pick(64); *kind = "inner"; break;
	case 2: iova += 0x10000000ull; *kind = "clamped"; break;
	}
	return iova;
}

/* What a device write changed in the buffer: how many bytes, where (first and
 * last, as page:offset) and a hash of that span only, so that an earlier
 * difference does not show again in every later line. */
static void report_changes(void)
{
	uint64_t n = 0, first = 0, last = 0;
	for (uint64_t i = 0; i < RW_PAGES * PAGE; i++)
		if (buf[i] != shadow[i]) {
			if (!n)
				first = i;
			last = i;
			n++;
		}
	printf(" changed=%llu", (unsigned long long)n);
	if (n)
		printf(" at=%llu:%llu..%llu:%llu hash=%016llx", (unsigned long long)(first / PAGE),
		       (unsigned long long)(first % PAGE), (unsigned long long)(last / PAGE),
		       (unsigned long long)(last % PAGE), (unsigned long long)hash(buf + first, last + 1 - first));
	memcpy(shadow, buf, RW_PAGES * PAGE);
}

static void op_dma_to_ram(void)
{
	uint64_t cnt;
	const char *kind;
	uint64_t iova = dma_iova(&cnt, &kind);
	uint64_t dev = DEV_BUF + (cnt >= 4096 ? 0 : 8 * pick((4096 - cnt) / 8 + 1));
	if (pick(12) == 0) {
		dev = DEV_BUF + 4096 - 8;
		cnt = 64;
		kind = "devbuf-overrun";
	}
	const char *st = edu_dma(dev, iova, cnt, 1);
	printf("%03d dma-write %s iova=%#llx dev=%#llx cnt=%llu -> %s", step, kind, (unsigned long long)iova,
	       (unsigned long long)(dev - DEV_BUF), (unsigned long long)cnt, st);
	report_changes();
	printf("\n");
}

static void op_dma_from_ram(void)
{
	uint64_t cnt;
	const char *kind;
	uint64_t iova = dma_iova(&cnt, &kind);
	uint64_t dev = DEV_BUF + (cnt >= 4096 ? 0 : 8 * pick((4096 - cnt) / 8 + 1));
	if (cnt > PAGE)
		cnt = PAGE;
	const char *st = edu_dma(iova, dev, cnt, 0);
	/* what the device holds now, through the scratch page */
	memset(scratch, 0xee, PAGE);
	const char *st2 = edu_dma(dev, SCRATCH_IOVA, cnt, 1);
	printf("%03d dma-read %s iova=%#llx dev=%#llx cnt=%llu -> %s readback %s hash=%016llx head=%02x%02x%02x%02x\n",
	       step, kind, (unsigned long long)iova, (unsigned long long)(dev - DEV_BUF), (unsigned long long)cnt,
	       st, st2, (unsigned long long)hash(scratch, cnt), scratch[0], scratch[1], scratch[2], scratch[3]);
}

static void op_bad(void)
{
	int r;
	switch (pick(4)) {
	case 0: {
		struct vfio_iommu_type1_dma_map m = { .argsz = 8, .flags = 3, .vaddr = va(0, 0), .iova = WIN_IOVA, .size = PAGE };
		r = ioctl(container, VFIO_IOMMU_MAP_DMA, &m) ? errno : 0;
		printf("%03d bad map-argsz-small -> %s\n", step, ename(r));
		break;
	}
	case 1: {
		struct vfio_iommu_type1_dma_unmap u = { .argsz = 8, .iova = WIN_IOVA, .size = PAGE };
		r = ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u) ? errno : 0;
		printf("%03d bad unmap-argsz-small -> %s\n", step, ename(r));
		break;
	}
	case 2: {
		struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .flags = 1u << 5, .iova = WIN_IOVA, .size = PAGE };
		r = ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u) ? errno : 0;
		printf("%03d bad unmap-flag -> %s\n", step, ename(r));
		break;
	}
	default: {
		struct vfio_iommu_type1_dirty_bitmap d = { .argsz = sizeof d, .flags = 0 };
		r = ioctl(container, VFIO_IOMMU_DIRTY_PAGES, &d) ? errno : 0;
		printf("%03d bad dirty-no-flag -> %s\n", step, ename(r));
		break;
	}
	}
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s /dev/vfio/<group> <device> <seed> <steps>\n", argv[0]);
		return 2;
	}
	uint64_t seed = strtoull(argv[3], NULL, 0);
	int steps = atoi(argv[4]);
	rng = seed;
	setvbuf(stdout, NULL, _IOLBF, 0);

	buf = mmap(BUF_HINT, BUF_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	scratch = mmap(SCRATCH_HINT, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	shadow = malloc(RW_PAGES * PAGE);
	if (buf == MAP_FAILED || scratch == MAP_FAILED || !shadow) {
		perror("mmap");
		return 1;
	}
	for (uint64_t i = 0; i < BUF_PAGES * PAGE; i++)
		buf[i] = (uint8_t)(i * 7 + (i >> 12) * 13 + seed);
	memcpy(shadow, buf, RW_PAGES * PAGE);
	if (mprotect(buf + RW_PAGES * PAGE, RO_PAGES * PAGE, PROT_READ) ||
	    mprotect(buf + (RW_PAGES + RO_PAGES) * PAGE, (BUF_PAGES - RW_PAGES - RO_PAGES) * PAGE, PROT_NONE)) {
		perror("mprotect");
		return 1;
	}

	printf("walk seed=%llu steps=%d\n", (unsigned long long)seed, steps);
	container = open("/dev/vfio/vfio", O_RDWR);
	group = open(argv[1], O_RDWR);
	if (container < 0 || group < 0) {
		printf("open -> %s\n", ename(errno));
		return 1;
	}
	struct vfio_group_status gs = { .argsz = sizeof gs };
	int r = ioctl(group, VFIO_GROUP_GET_STATUS, &gs) ? errno : 0;
	printf("group-status -> %s flags=%#x\n", ename(r), gs.flags);
	r = ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) ? errno : 0;
	printf("set-container -> %s\n", ename(r));
	static const struct { int ext; const char *n; } exts[] = {
		{ VFIO_TYPE1_IOMMU, "type1" }, { VFIO_TYPE1v2_IOMMU, "type1v2" },
		{ VFIO_TYPE1_NESTING_IOMMU, "nesting" }, { VFIO_UNMAP_ALL, "unmap-all" },
		{ VFIO_UPDATE_VADDR, "update-vaddr" }, { VFIO_NOIOMMU_IOMMU, "noiommu" },
	};
	for (unsigned i = 0; i < sizeof exts / sizeof exts[0]; i++)
		printf("extension %s -> %d\n", exts[i].n, ioctl(container, VFIO_CHECK_EXTENSION, exts[i].ext));
	r = ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) ? errno : 0;
	printf("set-iommu type1v2 -> %s\n", ename(r));
	devfd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
	if (devfd < 0) {
		printf("get-device-fd -> %s\n", ename(errno));
		return 1;
	}
	struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX };
	r = ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri) ? errno : 0;
	printf("bar0 -> %s size=%#llx flags=%#x\n", ename(r), (unsigned long long)ri.size, ri.flags);
	bar0 = ri.offset;
	printf("edu id=%#x\n", rd32(0));
	/* bus master and memory enable, as a driver does before DMA (edu in
	 * QEMU, and softvfio's, drop DMA without bus master; medu ignores it) */
	struct vfio_region_info ci = { .argsz = sizeof ci, .index = VFIO_PCI_CONFIG_REGION_INDEX };
	uint16_t cmd = 0;
	if (ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ci) || pread(devfd, &cmd, 2, ci.offset + 4) != 2) {
		printf("config -> %s\n", ename(errno));
		return 1;
	}
	cmd |= 0x6;
	r = pwrite(devfd, &cmd, 2, ci.offset + 4) == 2 ? 0 : errno;
	printf("bus-master -> %s\n", ename(r));

	step = 0;
	vmlck();
	map_scratch();
	op_get_info();
	for (step = 1; step <= steps; step++) {
		uint64_t k = pick(100);
		if (k < 30) op_map();
		else if (k < 38) op_unmap(0);
		else if (k < 43) op_unmap(1);
		else if (k < 61) op_dma_to_ram();
		else if (k < 73) op_dma_from_ram();
		else if (k < 76) op_vaddr_invalidate();
		else if (k < 79) op_vaddr_update();
		else if (k < 85) op_dirty_ctl();
		else if (k < 93) op_dirty_get();
		else if (k < 94) op_unmap_all();
		else if (k < 97) op_get_info();
		else op_bad();
		if (step % 25 == 0)
			vmlck();
	}
	step = steps + 1;
	op_get_info();
	vmlck();
	close(devfd);
	vmlck();
	printf("done\n");
	return 0;
}
