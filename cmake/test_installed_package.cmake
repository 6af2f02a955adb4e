# ctest: install the core into a scratch prefix, then build and run the example as an
# outside project would (find_package(svdzip)), proving the exported package works.
set(prefix ${BIN}/pkgtest/prefix)
set(consumer ${BIN}/pkgtest/consumer)
file(REMOVE_RECURSE ${BIN}/pkgtest)
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}")
  endif()
endfunction()
run(${CMAKE_COMMAND} --install ${BIN} --prefix ${prefix})
run(${CMAKE_COMMAND} -S ${SRC}/examples/cpp_consumer -B ${consumer}
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${consumer})
run(${consumer}/svdzip_example)
