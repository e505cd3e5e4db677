# Serving targets (included by the Makefile). JOB is a job name in $(JOBS) or a model dir.
PORT ?= 8080
MODEL_STORE ?= model-store

.PHONY: serve package predict

serve: install ## TorchServe on 127.0.0.1:$(PORT) with a job's model: make serve JOB=<job-name> (Ctrl-C stops)
	@command -v java >/dev/null || { echo "TorchServe needs Java 17: apt-get install openjdk-17-jre-headless"; exit 1; }
	@test -n "$(JOB)" || { echo "usage: make serve JOB=<job-name> [PORT=8080]"; exit 2; }
	$(BIN)/localsage serve $(JOB) --jobs-dir $(JOBS) --port $(PORT)

package: install ## TorchServe .mar of a job's model into $(MODEL_STORE): make package JOB=<job-name>
	@test -n "$(JOB)" || { echo "usage: make package JOB=<job-name>"; exit 2; }
	$(BIN)/localsage package $(JOB) --jobs-dir $(JOBS) --export-path $(MODEL_STORE)

predict: install ## top labels from a running endpoint: make predict IMAGES="a.jpg b.png" [PORT=8080]
	$(BIN)/localsage predict --endpoint http://127.0.0.1:$(PORT) $(IMAGES)
