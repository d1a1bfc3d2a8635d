// Benchmark-only KMS client for Spark's own Parquet encryption (benchmarks/access_read.py).
// Master keys come from the Hadoop conf value "medimg.bench.master.keys" ("id:base64, id:base64"):
// this is what Spark's path needs short of a real KMS, and why the project does not use it
// (key material in Hadoop conf is visible in the Spark UI environment tab and the event log).
package medimg.bench;

import java.util.Base64;
import java.util.HashMap;
import java.util.Map;
import org.apache.parquet.crypto.KeyAccessDeniedException;
import org.apache.parquet.crypto.keytools.LocalWrapKmsClient;

public class HadoopConfKms extends LocalWrapKmsClient {
  private final Map<String, byte[]> keys = new HashMap<>();

  @Override
  protected void initializeInternal() throws KeyAccessDeniedException {
    String list = hadoopConfiguration.getTrimmed("medimg.bench.master.keys", "");
    for (String item : list.split(",")) {
      String[] kv = item.trim().split(":", 2);
      if (kv.length == 2) {
        keys.put(kv[0].trim(), Base64.getDecoder().decode(kv[1].trim()));
      }
    }
  }

  @Override
  protected byte[] getMasterKeyFromServer(String id) throws KeyAccessDeniedException {
    byte[] key = keys.get(id);
    if (key == null) {
      throw new KeyAccessDeniedException("master key " + id + " not configured");
    }
    return key;
  }
}
