# Copyright 2022 ByteDance and/or its affiliates.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

import torch
from monolith.data import Dataset, load_movielens_ratings
from monolith.data.proto import tf_example_pb2 as tf_train
from monolith.fid import hash_string_fid
from tqdm import tqdm
from multiprocessing import Process, cpu_count

def get_preprocessed_dataset(size='100k') -> Dataset:
  ratings = load_movielens_ratings(size)
  # For simplicity, we map each movie_title and user_id to numbers
  # by Hashing. You can use other ways to number them to avoid 
  # collision and better leverage Monolith's collision-free hash tables.  
  return Dataset.from_tensor_slices({
    'mov': torch.from_numpy(hash_string_fid(ratings['movie_id'], 1)).unsqueeze(1),
    'uid': torch.from_numpy(hash_string_fid(ratings['user_id'], 2)).unsqueeze(1),
    'label': torch.from_numpy(ratings['user_rating']).unsqueeze(1)
  })

def serialize_one(data):
  # serialize an training instance to string
  return tf_train.Example(features=tf_train.Features(
    feature={
      'mov': tf_train.Feature(int64_list=tf_train.Int64List(value=data['mov'])),
      'uid': tf_train.Feature(int64_list=tf_train.Int64List(value=data['uid'])),
      'label': tf_train.Feature(float_list=tf_train.FloatList(value=data['label']))
    }
  )).SerializeToString()

# serialize to human readable (csv) format
def serialize_hr(data):
  return f"{data['mov']},{data['uid']},{data['label']}\n"

def save_one_shard(total_shards, pid, start, end):
  ds = get_preprocessed_dataset('100k').map(lambda x: {
    'mov': torch.squeeze(x['mov']),
    'uid': torch.squeeze(x['uid']),
    'label': torch.squeeze(x['label'])
  })
  pbar = tqdm(position=pid, desc="[Serializing]")
  for i in range(start, end):
    ds_shard = ds.shard(total_shards, i).as_numpy_iterator()
    with open(f"data_100k/part_{i}.csv", "w") as f:
      for item in ds_shard:
        f.write(serialize_hr(item))
        pbar.update()

if __name__ == "__main__":
  # just let TF download this dataset if it doesn't exist
  ds = get_preprocessed_dataset('100k')
  for _ in ds.take(1):
    pass

  total_shards = 4
  num_process = min(max(cpu_count() // 4, 1), total_shards)
  processes = []
  shards_per_p = total_shards // num_process
  for i in range(num_process):
    # note: this multiprocessing is not very efficient because .shard needs to skip elements
    p = Process(target=save_one_shard, args=(total_shards, i, shards_per_p * i, shards_per_p * (i + 1)))
    p.start()
    processes.append(p)

  for p in processes:
    p.join()
