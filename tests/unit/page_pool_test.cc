// PagePool: pages made a chunk at a time and recycled with their memory.
#include "pagecache/page_pool.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

namespace blkstack::pagecache {
namespace {

TEST(PagePool, FreedPageComesBackWithItsMemoryAndANewPagesState) {
  PagePool pool;
  Page* p = pool.get();
  ASSERT_NE(p->data, nullptr);
  std::memset(p->data, 0x5a, kPageSize);
  std::byte* data = p->data;
  p->index = 42;
  p->set(kDirty | kUptodate);
  p->get();
  p->dirtied_ns = 7;
  pool.put(p);

  Page* q = pool.get();
  EXPECT_EQ(q, p);           // the page freed last is the next one out
  EXPECT_EQ(q->data, data);  // with its memory, touched already
  EXPECT_EQ(q->data[kPageSize - 1], std::byte{0x5a});
  EXPECT_EQ(q->index, 0u);
  EXPECT_EQ(q->flags.load(), 0u);
  EXPECT_EQ(q->refs.load(), 1u);
  EXPECT_EQ(q->dirtied_ns, 0u);
  EXPECT_EQ(q->lru_next, nullptr);
  pool.put(q);
}

TEST(PagePool, PagesOfAChunkAreDistinctAlignedAndAllUsable) {
  PagePool pool;
  std::vector<Page*> pages;
  std::set<std::byte*> datas;
  for (uint64_t i = 0; i < PagePool::kChunkPages + 3; ++i) {  // two chunks
    Page* p = pool.get();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p->data) % kPageSize, 0u);
    EXPECT_TRUE(datas.insert(p->data).second);
    std::memset(p->data, static_cast<int>(i), kPageSize);
    pages.push_back(p);
  }
  for (uint64_t i = 0; i < pages.size(); ++i) {
    EXPECT_EQ(pages[i]->data[0], static_cast<std::byte>(i & 0xff));
  }
  for (Page* p : pages) pool.put(p);
  // All of them again, and nothing new made: the same pages come back.
  std::set<Page*> again;
  for (uint64_t i = 0; i < pages.size(); ++i) again.insert(pool.get());
  EXPECT_EQ(again, std::set<Page*>(pages.begin(), pages.end()));
  for (Page* p : again) pool.put(p);
}

}  // namespace
}  // namespace blkstack::pagecache
