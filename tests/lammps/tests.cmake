# LAMMPS-level tests of pair_style ds4sci (label "lammps"): a real lmp with the PLUGIN package
# (LAMMPS_BINARY, e.g. from tools/build_lammps.sh) loads the plugin built from plugin/ against the
# same LAMMPS tree (LAMMPS_SOURCE_DIR). Runs under mpirun with 1, 2 and 4 ranks.
if(LAMMPS_BINARY AND TARGET ds4sciplugin)
  find_package(Python3 REQUIRED COMPONENTS Interpreter)
  find_package(MPI REQUIRED COMPONENTS CXX)
  set(ds4sci_lammps_cases golden:small golden:typical golden:lower_atomref ranks fd nve units restart
      errors runs hybrid)
  foreach(case ${ds4sci_lammps_cases})
    string(REPLACE ":" "_" name "lammps_${case}")
    add_test(NAME ${name}
             COMMAND Python3::Interpreter ${CMAKE_CURRENT_SOURCE_DIR}/lammps/lammps_test.py
                     --lmp ${LAMMPS_BINARY} --plugin $<TARGET_FILE:ds4sciplugin>
                     --golden ${CMAKE_CURRENT_SOURCE_DIR}/golden
                     --workdir ${CMAKE_CURRENT_BINARY_DIR}/lammps/${name}
                     --mpiexec ${MPIEXEC_EXECUTABLE} ${case})
    set_tests_properties(${name} PROPERTIES LABELS lammps TIMEOUT 600)
  endforeach()

  # device cuda against device cpu through LAMMPS (label "gpu"; exit 77 = skipped without a GPU,
  # so CI without one stays green): golden configurations, a 10,648-atom periodic Si box on 1, 2
  # and 4 ranks (ranks share the GPUs there are), hybrid/overlay with zbl, and out-of-memory.
  # tools/gpu_lammps.sh runs the same commands.
  set(ds4sci_lammps_gpu_cases gpu_golden:small gpu_golden:typical gpu_golden:lower_atomref gpu_box
      gpu_hybrid gpu_oom)
  foreach(case ${ds4sci_lammps_gpu_cases})
    string(REPLACE ":" "_" name "lammps_${case}")
    add_test(NAME ${name}
             COMMAND Python3::Interpreter ${CMAKE_CURRENT_SOURCE_DIR}/lammps/lammps_test.py
                     --lmp ${LAMMPS_BINARY} --plugin $<TARGET_FILE:ds4sciplugin>
                     --golden ${CMAKE_CURRENT_SOURCE_DIR}/golden
                     --si-model ${PROJECT_SOURCE_DIR}/potentials/si-sw-et.safetensors
                     --cpu-threads 8
                     --workdir ${CMAKE_CURRENT_BINARY_DIR}/lammps/${name}
                     --mpiexec ${MPIEXEC_EXECUTABLE} ${case})
    set_tests_properties(${name} PROPERTIES LABELS "lammps;gpu" SKIP_RETURN_CODE 77 TIMEOUT 900)
  endforeach()

  # The shipped Si potential against its teacher, Stillinger-Weber, run by our own lmp (built with
  # MANYBODY) with Si.sw from the same LAMMPS tree: no Debian lammps package needed.
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/lammps/si_tests.cmake)
    set(DS4SCI_TEACHER_LMP ${LAMMPS_BINARY} CACHE STRING
        "lmp with pair_style sw used as the teacher by the si_* tests")
    include(${CMAKE_CURRENT_SOURCE_DIR}/lammps/si_tests.cmake)
    set_property(TEST lammps_si_teacher lammps_si_nve APPEND PROPERTY
                 ENVIRONMENT LAMMPS_SOURCE_DIR=${LAMMPS_SOURCE_DIR})
  endif()
elseif(LAMMPS_BINARY)
  message(WARNING "LAMMPS_BINARY is set but LAMMPS_SOURCE_DIR is not: the plugin and the LAMMPS "
                  "tests are not built")
endif()
